"""The MONAI Label app's parts: settings from ``--conf``, infer tasks, the train task."""
