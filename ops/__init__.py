"""The operations tool, ``python -m ops``: dead letters on the poison queue, command status, and the iTwin webhook
subscription.

Command status (``commands show|list``) reads the command ledger, the app's table ``itwincommands`` (see
`shared.ledger`): it needs the ledger's table in the app's storage account (the Bicep template and ``make dev``
create it), and the tool's sign-in needs to be able to read it. A replay of a command the ledger tracks sets its row
back to ``queued``, so it needs to write there too.

It reads the app's own settings (``AzureWebJobsStorage`` in either form, ``ITWIN_*``) from the environment and
``local.settings.json``, and works the same against Azurite and the simulator as against Azure (signed in with
``az login``: ``DefaultAzureCredential`` for storage and Key Vault). Nothing here runs in the function app.
"""
