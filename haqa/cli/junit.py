"""``haqa run --junit FILE``: the run's verdicts as JUnit XML, which CI systems render as tests.

One test case for the goal (passed: an answer meets it; failure: none did; error: the run stopped
before the end) and one per figure the regression gate limits (failure: worse than allowed; a
figure either side did not measure fails too, naming which). A gate that found no baseline yet is
one skipped case, so the first run of a pipeline is visibly ungated rather than silently green.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from haqa.cli.answer import RunAnswer


def _case(suite: ET.Element, name: str, classname: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", name=name, classname=classname, time="0")


def _goal_case(suite: ET.Element, answer: RunAnswer, classname: str) -> None:
    case = _case(suite, f"goal: {answer.goal}", classname)
    result = answer.result
    if answer.status == "stopped":
        ET.SubElement(
            case,
            "error",
            message=f"the run stopped before the end; resume it: haqa run --resume {answer.run_id}",
            type="RunStopped",
        )
    elif answer.status == "not_met" and result is not None:
        ET.SubElement(case, "failure", message=result.headline(), type="GoalNotMet")
    elif result is not None:
        ET.SubElement(
            case, "system-out"
        ).text = f"{result.headline()}\n{result.llama_server_cmd or ''}"


def _gate_cases(suite: ET.Element, answer: RunAnswer, classname: str) -> None:
    report = answer.result.regression if answer.result else None
    if report is None:
        return
    if report.baseline_run is None:
        case = _case(suite, "regression gate", classname)
        ET.SubElement(case, "skipped", message=report.reason())
        return
    for check in report.checks:
        case = _case(suite, f"regression: {check.metric} vs run {report.baseline_run}", classname)
        if not check.passed:
            ET.SubElement(case, "failure", message=check.describe(), type="RegressionFailed")
        else:
            ET.SubElement(case, "system-out").text = f"{check.describe()} ({report.basis})"


def junit_xml(answer: RunAnswer) -> str:
    """The answer's verdicts as one JUnit XML document."""
    classname = f"haqa.run.{answer.run_id}"
    suite = ET.Element("testsuite", name=f"haqa run {answer.run_id}")
    props = ET.SubElement(suite, "properties")
    for key, value in (
        ("run_id", answer.run_id),
        ("model", answer.model),
        ("store", answer.store),
        ("hardware_fingerprint", answer.hardware_fingerprint or ""),
        ("artifact_sha256", answer.artifact_sha256 or ""),
    ):
        ET.SubElement(props, "property", name=key, value=value)
    _goal_case(suite, answer, classname)
    _gate_cases(suite, answer, classname)
    cases = suite.findall("testcase")
    suite.set("tests", str(len(cases)))
    for tag, attr in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
        suite.set(attr, str(sum(1 for c in cases if c.find(tag) is not None)))
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"
