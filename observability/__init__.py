"""The operators' view, locally: Application Insights tables from exported telemetry, the workbook's and the
alerts' queries as Python, Flex Consumption costs, and `python -m observability.pictures`. Tooling only: not
deployed (.funcignore)."""
