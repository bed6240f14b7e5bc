"""The KQL the deployment runs: the workbook's queries (infra/workbook.json) and the log search alerts'
(infra/modules/alerts.bicep), and what each reads: its table, the metric it filters on (`name == "..."`) and the
dimensions it uses (`customDimensions["..."]`)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from bicep_model import INFRA, MODULES, body, parse_bicep, resources_of_type

WORKBOOK = INFRA / "workbook.json"
ALERTS = MODULES / "alerts.bicep"


@dataclass(frozen=True)
class Query:
    """One KQL query of the deployment, named after its workbook item or alert rule."""

    source: str
    name: str
    text: str

    @property
    def table(self) -> str:
        return self.text.split(None, 1)[0]

    @property
    def metrics(self) -> list[str]:
        return re.findall(r'\bname\s*==\s*"([^"]+)"', self.text)

    @property
    def dimensions(self) -> set[str]:
        return set(re.findall(r'customDimensions\[\s*"([^"]+)"\s*\]', self.text))


def workbook() -> dict[str, Any]:
    return json.loads(WORKBOOK.read_text(encoding="utf-8"))


def workbook_queries() -> list[Query]:
    return [
        Query("workbook", item["name"], item["content"]["query"]) for item in workbook()["items"] if item["type"] == 3
    ]


def alert_queries() -> list[Query]:
    module = parse_bicep(ALERTS)
    variables = module["variables"]
    queries = []
    for symbol, rule in resources_of_type(module, "Microsoft.Insights/scheduledQueryRules").items():
        for criterion in body(rule)["properties"]["criteria"]["allOf"]:
            text = criterion["query"]
            queries.append(Query("alert", symbol, variables[text]["value"] if text in variables else text))
    return queries


def all_queries() -> list[Query]:
    return workbook_queries() + alert_queries()
