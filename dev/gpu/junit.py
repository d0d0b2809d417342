"""Reads pytest's JUnit XML for dev/gpu/check.sh: `counts FILE` prints "passed failed skipped", `failed FILE`
prints the node id of each failed or erroring test, one per line."""
import sys
import xml.etree.ElementTree as ET


def cases(path):
    for case in ET.parse(path).getroot().iter("testcase"):
        module = case.get("classname", "")
        parts = module.split(".")
        # pytest writes classname "tests.test_x" (module) or "tests.test_x.TestClass"
        for cut in range(len(parts), 0, -1):
            if parts[cut - 1].startswith("test_"):
                nodeid = "/".join(parts[:cut]) + ".py" + "".join(f"::{p}" for p in parts[cut:])
                break
        else:
            nodeid = module
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped" and outcome == "passed":
                outcome = "skipped"
        yield f"{nodeid}::{case.get('name')}", outcome


def main(command, path):
    try:
        results = list(cases(path))
    except (OSError, ET.ParseError) as e:  # pytest died before writing its report: count that as a failure
        print(f"junit.py: {path}: {e}", file=sys.stderr)
        results = [("(no report)", "failed")]
    if command == "counts":
        outcomes = [o for _, o in results]
        print(outcomes.count("passed"), outcomes.count("failed"), outcomes.count("skipped"))
    else:
        for nodeid, outcome in results:
            if outcome == "failed" and nodeid != "(no report)":
                print(nodeid)


if __name__ == "__main__":
    main(*sys.argv[1:3])
