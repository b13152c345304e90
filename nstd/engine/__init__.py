"""The style-transfer engine: tensors in, tensors and loss histories out.

Nothing here touches files, folders, logging set-up or the daemon.
"""
