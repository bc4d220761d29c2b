"""The facts everything else builds on: the feature list, the settings (every environment variable,
read once), the model's files on disk (paths, manifest, digests) and the decision threshold.

Imports: the standard library and third-party packages only; nothing else in `service`."""
