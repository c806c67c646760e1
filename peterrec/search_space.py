"""The search space of ``pipelines.tune``: params-file lines (RecBole / CASR ``hyper.test``) as Optuna distributions.

See :mod:`peterrec.tuning` for the file format and the distribution semantics.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re

from peterrec.errors import ConfigError

DISTRIBUTIONS = ("choice", "loguniform", "quniform", "uniform")
N_NUMBERS = {"uniform": 2, "loguniform": 2, "quniform": 3}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclasses.dataclass
class ParamSpec:
    """One line of a params file: ``name distribution arguments`` (see the module docstring)."""

    name: str
    distribution: str
    args: tuple  # (low, high) / (low, high, q) / the choices
    source: str = "<params>"
    line: int = 0

    @property
    def where(self):
        return f"{self.source}:{self.line}"

    def _choices(self):
        """Optuna's categorical choices (its storable types; other values by their repr) -> value."""
        return {v if v is None or isinstance(v, (bool, int, float, str)) else repr(v): v for v in self.args}

    def optuna_distribution(self):
        """The Optuna distribution this spec samples from (what :meth:`suggest` asks the trial for)."""
        from optuna import distributions

        if self.distribution == "choice":
            return distributions.CategoricalDistribution(list(self._choices()))
        if self.distribution == "loguniform":
            return distributions.FloatDistribution(math.exp(self.args[0]), math.exp(self.args[1]), log=True)
        if self.distribution == "uniform":
            return distributions.FloatDistribution(*self.args)
        low, high, q = self.args
        return distributions.IntDistribution(round(low / q), round(high / q))

    def suggest(self, trial):
        """Draw this parameter from an Optuna trial; returns the value (not Optuna's internal one)."""
        dist = self.optuna_distribution()
        if self.distribution == "choice":
            raw = trial.suggest_categorical(self.name, dist.choices)
        elif self.distribution == "quniform":
            raw = trial.suggest_int(self.name, dist.low, dist.high)
        else:
            raw = trial.suggest_float(self.name, dist.low, dist.high, log=dist.log)
        return self.value(raw)

    def value(self, raw):
        """The parameter value for Optuna's internal value ``raw``."""
        if self.distribution == "choice":
            return self._choices()[raw]
        if self.distribution == "quniform":
            q = self.args[2]
            return int(raw) * int(q) if float(q).is_integer() else round(raw * q, 12)
        return raw

    def as_dict(self):
        return {"name": self.name, "distribution": self.distribution, "args": list(self.args)}


def parse_params_file(path) -> list[ParamSpec]:
    """Parse a hyper.test file; ConfigError naming ``file:line`` and the bad token on malformed input."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise ConfigError(f"--params_file {path}: cannot read ({err.strerror or err})") from err
    specs, seen = [], {}
    for number, raw in enumerate(lines, 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        spec = parse_line(text, path, number)
        if spec.name in seen:
            raise ConfigError(f"{path}:{number}: {spec.name!r} is already defined on line {seen[spec.name]}")
        seen[spec.name] = number
        specs.append(spec)
    if not specs:
        raise ConfigError(f"{path}: no parameters (each line: name distribution arguments)")
    return specs


def parse_line(text, path="<params>", number=0) -> ParamSpec:
    """One ``name distribution arguments`` line as a :class:`ParamSpec`."""
    where = f"{path}:{number}"
    parts = text.split(None, 2)
    if len(parts) < 3:
        raise ConfigError(f"{where}: expected 'name distribution arguments', got {text!r}")
    name, dist, rest = parts
    if not _NAME.match(name):
        raise ConfigError(f"{where}: {name!r} is not a parameter name")
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: unknown distribution {dist!r} (expected one of {', '.join(DISTRIBUTIONS)})")
    if dist == "choice":
        try:
            values = ast.literal_eval(rest)
        except (ValueError, SyntaxError) as err:
            raise ConfigError(f"{where}: choice values {rest!r} are not a Python literal list ({err.__class__.__name__})") from err
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(f"{where}: choice needs a non-empty list such as [32,64], got {rest!r}")
        spec = ParamSpec(name, dist, tuple(values), str(path), number)
        if len(spec._choices()) != len(values):
            raise ConfigError(f"{where}: choice values {rest!r} repeat a value")
        return spec
    tokens = [t.strip() for t in rest.replace(" ", "").split(",")]
    expected = N_NUMBERS[dist]
    if len(tokens) != expected:
        shape = "low,high" if expected == 2 else "low,high,q"
        raise ConfigError(f"{where}: {dist} takes {expected} comma-separated numbers ({shape}), got {rest!r}")
    numbers = []
    for token in tokens:
        try:
            number_value = float(token)
        except ValueError:
            raise ConfigError(f"{where}: {token!r} is not a number ({dist} {rest})") from None
        if not math.isfinite(number_value):
            raise ConfigError(f"{where}: {token!r} is not a finite number ({dist} {rest})")
        numbers.append(number_value)
    if numbers[0] > numbers[1]:
        raise ConfigError(f"{where}: low {tokens[0]} is greater than high {tokens[1]} ({dist} {rest})")
    if dist == "quniform" and numbers[2] <= 0:
        raise ConfigError(f"{where}: q {tokens[2]} must be > 0 (quniform {rest})")
    if dist == "loguniform" and numbers[1] > 700:
        raise ConfigError(f"{where}: loguniform bounds are exponents (e^a..e^b); {tokens[1]} is far too large")
    return ParamSpec(name, dist, tuple(numbers), str(path), number)


def describe_specs(specs):
    """One line per spec with the concrete range Optuna samples (e.g. loguniform's e^a..e^b)."""
    out = []
    for s in specs:
        d = s.optuna_distribution()
        if s.distribution == "loguniform":
            out.append(f"{s.name}: loguniform {s.args[0]:g},{s.args[1]:g} -> log-uniform in [{d.low:.3g}, {d.high:.3g}]")
        elif s.distribution == "quniform":
            out.append(f"{s.name}: quniform -> {{{s.value(d.low)}, ..., {s.value(d.high)}}} step {s.args[2]:g}")
        elif s.distribution == "uniform":
            out.append(f"{s.name}: uniform in [{d.low:g}, {d.high:g}]")
        else:
            out.append(f"{s.name}: one of {list(s.args)}")
    return out

