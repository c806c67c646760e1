"""Finetune a pretrained export with PeterRec model patches (or a baseline mode).

    python -m pipelines.finetune --insertion serial

With no other flags it loads checkpoints/pretrain-nextitnet/export, inserts serial
patches, and learns the embedded default's target-domain items
(Data/synthetic/target.inter); `--task classify` learns the user-profile classes
(Data/synthetic/profile.inter). Baselines: --finetune_mode {fineall,finelast,finecls,scratch}.
"""

import json

from absl import flags

from pipelines import flags as common

common.define_data_flags()
common.define_train_flags()
flags.DEFINE_string("pretrained", "checkpoints/pretrain-nextitnet/export", "Pretraining export directory.")
flags.DEFINE_enum("task", "items", ["items", "classify"], "Target items (cold start) or user-profile classes.")
flags.DEFINE_enum("insertion", None, ["serial", "parallel"], "Where the model patches go (PeterRec mode; default: serial on a "
                  "causal NextItNet export, parallel on a non-causal GRec one, as the original's scripts).")
flags.DEFINE_enum("finetune_mode", "peterrec", ["peterrec", "fineall", "finelast", "finecls", "scratch"], "What is trained.")
flags.DEFINE_integer("patch_dim", None, "Patch bottleneck width (default: channels / 4).", lower_bound=1)
flags.DEFINE_bool("parallel_identity", True, "Keep the original's identity inside parallel patches; --noparallel_identity "
                  "computes conv(x) + f(x) (with --patch_zero_init: exactly the pretrained network at init).")
flags.DEFINE_integer("head_warmup_epochs", 0, "fineall/finelast/scratch: train only the new target table for this many epochs "
                     "before the backbone unfreezes (linear probing, then finetuning; 0 = the original).", lower_bound=0)
flags.DEFINE_enum("pooling", None, ["sep", "mean", "last", "mean_nosep"], "User vector: sep = the output at the separator(s) "
                  "(the original PeterRec scripts'); mean = the mean of the source items' outputs; without any separator in the "
                  "input: last = the last real item's output (the original NextItNet FineAll's), mean_nosep = the mean over the "
                  "source items (the original GRec FineAll's). Default: for --task items sep, but with --finetune_mode fineall last "
                  "(causal) or mean_nosep (non-causal); mean for classify.")
flags.DEFINE_bool("user_norm", None, "LayerNorm on the user vector before the target table, trained with it (default: off for "
                  "--task items as in the original, on for classify).")
flags.DEFINE_bool("patch_zero_init", False, "Zero-initialise the patches' up-projection (serial = exact pretrained function at init).")
flags.DEFINE_enum("sampler", "uniform", ["uniform", "lambdafm"], "Negative sampler for the item task (lambdafm: BPR and, as the "
                  "original's LambdaFM script, full-ranking evaluation unless --eval_protocol says otherwise).")
flags.DEFINE_float("rho", 0.3, "LambdaFM popularity-rank sampler parameter.", lower_bound=1e-6)
flags.DEFINE_float("l2", 0.01, "L2 weight on the target table.", lower_bound=0.0)
flags.DEFINE_float("max_oov_share", 0.5, "Fail when more source items than this share are unknown to the backbone.", lower_bound=0.0, upper_bound=1.0)
FLAGS = flags.FLAGS


def config_from_flags():
    """The PeterRec recipe's FinetuneConfig from the flags (unset --epochs / --max_len keep finetuning's own defaults)."""
    from peterrec import recipes

    return common.config_from_flags(recipes.get("peterrec"))


def main(argv):
    del argv
    from peterrec import recipes

    cfg = config_from_flags()
    metrics = recipes.get("peterrec").run(cfg)
    keys = ("hr@1", "accuracy", "macro_f1") if cfg.task == "classify" else ("hr@5", "mrr@5", "ndcg@5")
    print(json.dumps({
        "export_dir": metrics.get("export_dir"),  # None on a non-chief multi-worker task
        "patch_dir": metrics.get("patch_dir"),
        "test": {k: round(metrics["test"][k], 4) for k in keys if k in metrics["test"]},
        "popularity_test": {k: round(metrics["popularity"]["test"][k], 4) for k in keys if k in metrics["popularity"]["test"]},
        "trainable_params": metrics["trainable_params"],
        "trainable_ratio": round(metrics["trainable_ratio"], 4),
        "train_wall_seconds": metrics["train_wall_seconds"],
    }, indent=2))


if __name__ == "__main__":
    common.run(main)
