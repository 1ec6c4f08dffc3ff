"""The command a worker runs a pcdb flow run with (the deployments' ``command`` job variable):
Prefect's own engine, ``python -m prefect.engine``, with Prefect's run heartbeat switched off,
because every pcdb flow sends its own (flows/heartbeat.py). Nothing else differs."""

import runpy

from flows.heartbeat import without_prefect_heartbeat

if __name__ == "__main__":
    with without_prefect_heartbeat():
        runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
