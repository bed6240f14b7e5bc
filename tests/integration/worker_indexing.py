"""Index a function app the way the Azure Functions Python worker does when the host starts it, and print what it
found as JSON: `python worker_indexing.py <app folder>`, run by an interpreter that has `azure-functions-runtime`
(Python 3.13+) and the app's requirements.

The worker loads the binding registry, imports `function_app.py` and collects its functions
(`loader.index_function_app`), then registers each one (`Registry.add_indexed_function`), which checks the function's
parameters and return annotation against its bindings and raises FunctionLoadError on a mismatch: in Azure, that
is the error that leaves an app with no functions. Registering needs the worker's protobuf module only for three
enum values of `BindingInfo`, which it compares the bindings' directions and data types against; that module comes
with the host's proxy worker, not with any package, so the values are given here as FunctionRpc.proto numbers them.
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

# BindingInfo.Direction (in = 0, out = 1, inout = 2) and BindingInfo.DataType (undefined = 0) in FunctionRpc.proto.
PROTOS = SimpleNamespace(BindingInfo=SimpleNamespace(out=1, inout=2, undefined=0))


def index(app_folder: str) -> list[dict[str, object]]:
    """Each function of the app in ``app_folder``: its name, trigger, bound parameters and return binding."""
    from azure_functions_runtime.bindings.meta import load_binding_registry
    from azure_functions_runtime.functions import Registry
    from azure_functions_runtime.loader import index_function_app

    os.chdir(app_folder)
    sys.path.insert(0, app_folder)
    load_binding_registry()
    registry = Registry()
    found = []
    for function in index_function_app(os.path.join(app_folder, "function_app.py")):
        info = registry.add_indexed_function(function=function, protos=PROTOS)
        found.append(
            {
                "name": info.name,
                "trigger": function.get_trigger().get_binding_name(),
                "parameters": sorted(info.input_types),
                "returns": info.return_type.binding_name if info.return_type else None,
            }
        )
    return found


if __name__ == "__main__":
    print(json.dumps(index(sys.argv[1])))
