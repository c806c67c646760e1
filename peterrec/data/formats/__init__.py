"""The input formats of :mod:`peterrec.data.readers`, one module each.

``lines`` holds the line and cell helpers they share; each format module has a
``read_<format>(path, grouper)`` that feeds every interaction of a file to a
:class:`peterrec.data.readers.Grouper`.
"""
