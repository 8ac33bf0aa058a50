"""Built-in task and job types, one module per type (`tasks/<type>.py`).

Modules listed in HELPER_MODULES hold code shared by several types and are not types.
"""

HELPER_MODULES = ("transfer", "media", "ftp_common", "commands")
