#!/usr/bin/env python3
"""Holds the Prometheus and Grafana examples to the metrics the server exports.

Every PromQL expression of the alerting rules, of their unit tests and of the Grafana
dashboards may only name metrics of metric-names.txt, put on each only the labels listed for
it (and the target's `instance` and `job`), and group by, or print in a legend or an
annotation, only labels that its metrics carry. The series of the unit tests are held to the
same list, so that the tests feed what the server sends. The dashboards must be Grafana
dashboards: JSON with a uid, a title, a schema version, panels placed on the grid without
overlapping, and Prometheus targets that go through the dashboard's data source variable.

This reads expressions only far enough to find their names; promtool judges their syntax.
It reads that of the rules itself, and --promql-out writes the dashboards' expressions (their
Grafana variables replaced by plain values) as recording rules for `promtool check rules`.

Usage: check-exprs.py --names metric-names.txt [--promql-out RULES.yml] FILE.yml|FILE.json ...
Exit status 0 when every file passes, 1 with one line per problem otherwise.
"""

import argparse
import json
import re
import sys

import yaml

# Labels every scraped series carries, whatever the server exports.
TARGET_LABELS = {"instance", "job"}
# Words of PromQL that look like metric names. Function and aggregation names are told
# apart by the parenthesis that follows them.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
            "group_left", "group_right", "inf", "nan"}
GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}

TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])*)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^=<>@{}()\[\],:])
""", re.VERBOSE)


def load_names(path):
    """{metric: set of labels} from metric-names.txt."""
    names = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            fields = line.split()
            if len(fields) > 2 or not re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", fields[0]):
                sys.exit(f"{path}:{number}: expected a metric name and its labels, comma separated")
            names[fields[0]] = set(fields[1].split(",")) if len(fields) == 2 else set()
    return names


def tokens(expr):
    """The tokens of a PromQL expression, without spaces and comments. Grafana's variables
    ($instance, ${DS}, $__rate_interval) stand for values: they become a number."""
    expr = re.sub(r"\$\{[^}]*\}|\$\w+", "1", expr)
    out, at = [], 0
    while at < len(expr):
        m = TOKEN.match(expr, at)
        if not m:
            raise ValueError(f"cannot read {expr[at:at + 20]!r}")
        at = m.end()
        if m.lastgroup not in ("space", "comment"):
            out.append((m.lastgroup, m.group()))
    return out


def references(expr):
    """(metrics, matchers, grouping): the metric names an expression reads, each matcher as
    (metric or None, label), and the labels it groups or matches by."""
    toks = tokens(expr)
    metrics, matchers, grouping = [], [], []
    braces = brackets = 0
    selector = None       # the metric whose {matchers} are being read
    label_list = False    # inside by (...), on (...) and the like
    for i, (kind, text) in enumerate(toks):
        following = toks[i + 1][1] if i + 1 < len(toks) else None
        if kind == "op":
            if text == "{":
                braces += 1
            elif text == "}":
                braces -= 1
                selector = None
            elif text == "[":
                brackets += 1
            elif text == "]":
                brackets -= 1
            elif text == ")" and label_list:
                label_list = False
            continue
        if kind != "ident" or brackets:
            continue
        if braces:
            if following in ("=", "!=", "=~", "!~"):
                matchers.append((selector, text))
            continue
        if label_list:
            grouping.append(text)
            continue
        if text in GROUPING and following == "(":
            label_list = True
            continue
        # A function or an aggregation: `rate(`, `sum(`, `sum by (`.
        if text in KEYWORDS or following in ("(", "by", "without"):
            continue
        metrics.append(text)
        selector = text if following == "{" else None
    return metrics, matchers, grouping


class Checker:
    def __init__(self, names):
        self.names = names
        self.problems = []
        # The dashboards' expressions, for promtool.
        self.dashboard_exprs = []

    def problem(self, where, message):
        self.problems.append(f"{where}: {message}")

    def expr(self, where, expr, templates=()):
        """Checks one expression, and the labels the templates (legends, annotations) print."""
        try:
            metrics, matchers, grouping = references(expr)
        except ValueError as e:
            self.problem(where, str(e))
            return
        carried = set(TARGET_LABELS)
        for metric in metrics:
            if metric not in self.names:
                self.problem(where, f"{metric} is not in metric-names.txt")
            else:
                carried |= self.names[metric]
        for metric, label in matchers:
            if metric is None:
                # A selector without a name, {job="x"}: any label of the expression's metrics.
                allowed = carried
            elif metric in self.names:
                allowed = self.names[metric]
            else:
                continue  # unknown, said above
            if label not in allowed | TARGET_LABELS | {"__name__"}:
                owner = f"{metric} has no" if metric else "none of its metrics has a"
                self.problem(where, f"{owner} label {label}")
        for label in grouping:
            if label not in carried:
                self.problem(where, f"groups by {label}, which none of its metrics carries")
        for template in templates:
            for label in re.findall(r"\$labels\.(\w+)|\{\{\s*(\w+)\s*\}\}", template or ""):
                label = label[0] or label[1]
                if label not in carried and label not in ("alertname", "severity"):
                    self.problem(where, f"prints the label {label}, which none of its metrics carries")

    def series(self, where, series):
        """A unit test's input series, `metric{label="value",...}`."""
        m = re.fullmatch(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*", series)
        if not m:
            self.problem(where, f"cannot read the series {series!r}")
            return
        matchers = re.sub(r'"(?:\\.|[^"\\])*"', '""', m.group(2) or "")
        metric, labels = m.group(1), re.findall(r"([a-zA-Z_]\w*)\s*=", matchers)
        if metric not in self.names:
            self.problem(where, f"{metric} is not in metric-names.txt")
            return
        for label in labels:
            if label not in self.names[metric] | TARGET_LABELS:
                self.problem(where, f"{metric} has no label {label}")
        for label in self.names[metric] - set(labels):
            self.problem(where, f"{metric} without its label {label}")

    def rules(self, path, doc):
        for group in doc.get("groups") or []:
            for rule in group.get("rules") or []:
                name = rule.get("alert") or rule.get("record")
                where = f"{path}: {group.get('name')}: {name}"
                self.expr(where, str(rule.get("expr", "")), (rule.get("annotations") or {}).values())

    def tests(self, path, doc):
        for number, test in enumerate(doc.get("tests") or [], 1):
            where = f"{path}: test {number} ({test.get('name', 'unnamed')})"
            for series in test.get("input_series") or []:
                self.series(where, series.get("series", ""))
            for case in test.get("promql_expr_test") or []:
                self.expr(where, str(case.get("expr", "")))

    def dashboard(self, path):
        try:
            with open(path, encoding="utf-8") as f:
                board = json.load(f)
        except (OSError, ValueError) as e:
            self.problem(path, f"not JSON: {e}")
            return
        for key in ("uid", "title", "schemaVersion", "panels"):
            if key not in board:
                self.problem(path, f"no {key}")
        variables = (board.get("templating") or {}).get("list") or []
        sources = {f"${{{v['name']}}}" for v in variables if v.get("type") == "datasource"}
        sources |= {f"${{{i['name']}}}" for i in board.get("__inputs") or [] if i.get("type") == "datasource"}
        if not sources:
            self.problem(path, "no data source variable or input: the dashboard would name one data source")
        for var in variables:
            where = f"{path}: variable {var.get('name')}"
            if var.get("type") == "query":
                self.variable_query(where, var)
                if not self.source_ok(var.get("datasource"), sources):
                    self.problem(where, "does not use the data source variable")
        for note in (board.get("annotations") or {}).get("list") or []:
            if note.get("expr"):
                where = f"{path}: annotation {note.get('name')!r}"
                if not self.source_ok(note.get("datasource"), sources):
                    self.problem(where, "does not use the data source variable")
                self.expr(where, note["expr"], [note.get("titleFormat"), note.get("textFormat")])
                self.dashboard_exprs.append((path, f"annotation {note.get('name')}", note["expr"]))
        ids, cells = set(), {}
        for panel in self.panels(board.get("panels") or []):
            where = f"{path}: panel {panel.get('id')} ({panel.get('title')!r})"
            if panel.get("id") in ids:
                self.problem(where, "id used twice")
            ids.add(panel.get("id"))
            grid = panel.get("gridPos") or {}
            if not all(isinstance(grid.get(k), int) for k in ("x", "y", "w", "h")):
                self.problem(where, "no gridPos with x, y, w and h")
            elif grid["x"] < 0 or grid["w"] < 1 or grid["x"] + grid["w"] > 24:
                self.problem(where, "gridPos outside the 24 columns")
            else:
                covered = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                           for y in range(grid["y"], grid["y"] + grid["h"])}
                for other in sorted({cells[c] for c in covered if c in cells}):
                    self.problem(where, f"overlaps panel {other}")
                cells.update(dict.fromkeys(covered, panel.get("id")))
            if panel.get("type") == "row":
                continue
            targets = panel.get("targets") or []
            if not targets and panel.get("type") != "text":
                self.problem(where, "no targets")
            for target in targets:
                if not target.get("expr"):
                    self.problem(where, f"target {target.get('refId')} has no expr")
                    continue
                if not self.source_ok(target.get("datasource") or panel.get("datasource"), sources):
                    self.problem(where, f"target {target.get('refId')} does not use the data source variable")
                self.expr(f"{where} target {target.get('refId')}", target["expr"], [target.get("legendFormat")])
                self.dashboard_exprs.append((path, f"panel {panel.get('id')} {target.get('refId')}", target["expr"]))

    @staticmethod
    def panels(panels):
        for panel in panels:
            yield panel
            yield from Checker.panels(panel.get("panels") or [])

    @staticmethod
    def source_ok(source, sources):
        uid = source.get("uid") if isinstance(source, dict) else source
        return uid in sources

    def variable_query(self, where, var):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        m = re.fullmatch(r"\s*label_values\((?:(.*),)?\s*(\w+)\s*\)\s*", query or "")
        if m:
            selector, label = m.groups()
            if selector:
                self.expr(where, selector, ["{{%s}}" % label])
                self.dashboard_exprs.append((where.split(":")[0], f"variable {var.get('name')}", selector))
            elif not any(label in labels for labels in self.names.values()) and label not in TARGET_LABELS:
                self.problem(where, f"no metric has a label {label}")
            return
        m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query or "", re.S)
        if m:
            self.expr(where, m.group(1))
            self.dashboard_exprs.append((where.split(":")[0], f"variable {var.get('name')}", m.group(1)))
            return
        self.problem(where, f"cannot read the query {query!r}")


def write_rules(path, exprs):
    """The expressions as recording rules, which promtool parses. Grafana's interval variables
    become a duration and the others a word, which is what they stand for."""
    rules = []
    for board, where, expr in exprs:
        expr = re.sub(r"\$\{?__(rate_interval|interval|range)\}?", "5m", expr)
        expr = re.sub(r"\$\{[^}]*\}|\$\w+", "grafana_variable", expr)
        # The rule's name says where the expression is: mcp_raspi_device:panel_19_A.
        name = re.sub(r"\W", "_", board.rsplit("/", 1)[-1].removesuffix(".json")) + ":" + re.sub(r"\W", "_", where)
        rules.append({"record": name, "expr": expr})
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, f, sort_keys=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", required=True)
    parser.add_argument("--promql-out", help="write the dashboards' expressions here as recording rules")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    checker = Checker(load_names(args.names))
    for path in args.files:
        if path.endswith(".json"):
            checker.dashboard(path)
            continue
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f) or {}
        if "groups" in doc:
            checker.rules(path, doc)
        elif "tests" in doc:
            checker.tests(path, doc)
        else:
            checker.problem(path, "neither rules (groups:) nor rule tests (tests:)")
    if args.promql_out:
        write_rules(args.promql_out, checker.dashboard_exprs)
    for line in checker.problems:
        print(line)
    if checker.problems:
        count = len(checker.problems)
        print(f"{count} problem{'s' if count > 1 else ''}: the metrics and labels must be those of metric-names.txt,"
              " the dashboards Grafana's")
        return 1
    print(f"checked {len(args.files)} files against {len(checker.names)} metrics of {args.names}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
