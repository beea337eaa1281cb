"""The tasks of the paper: table-to-text (E2E, WebNLG, DART) and summarisation (XSum).

The one list every part (data loaders, scorers, the config schema) takes its task names from.
"""

TASKS = ("e2e", "webnlg", "dart", "xsum")
