"""The operations tool, ``python -m ops``: dead letters on the poison queue, and the iTwin webhook subscription.

It reads the app's own settings (``AzureWebJobsStorage`` in either form, ``ITWIN_*``) from the environment and
``local.settings.json``, and works the same against Azurite and the simulator as against Azure (signed in with
``az login``: ``DefaultAzureCredential`` for storage and Key Vault). Nothing here runs in the function app.
"""
