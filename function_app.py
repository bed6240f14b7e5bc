"""The Azure Functions app: one FunctionApp, the blueprints registered, nothing else."""

import azure.functions as func

from functions import commands, health, retention, webhooks, worker

app = func.FunctionApp()
for blueprint in (commands.bp, webhooks.bp, health.bp, worker.bp, retention.bp):
    app.register_functions(blueprint)
