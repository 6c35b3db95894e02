"""Folder put first on PYTHONPATH by the launcher: holds the sitecustomize that loads ckpt."""
