"""The expressions stage: one record per rules file, resume, and refusal of other settings."""

from __future__ import annotations

import json

import pytest

from datagen.expressions import describe_patch, run_expressions
from datagen.pipeline import run_pipeline
from datagen.records import PatchRules, RelationTable
from datagen.rules import run_rules
from datagen.stage_state import StageError
from datagen.storage import read_json

LOVEDA_ONLY = {"synthetic": {"isaid_images": {}}, "isaid": {"enabled": False}}


def journal_lines(work) -> int:
    return len((work / ".state" / "expressions" / "journal.jsonl").read_text().splitlines())


def test_the_stage_needs_finished_rules(make_config):
    cfg = make_config(**LOVEDA_ONLY)
    run_pipeline(cfg, until="loveda")
    with pytest.raises(StageError, match="stage 'rules' has not finished"):
        run_expressions(cfg)
    assert not (cfg.work_path / "stages" / "expressions").exists()


def test_the_stage_redoes_what_changed_and_refuses_other_settings(make_config, capsys):
    cfg = make_config(seed=7, expressions={"max_per_target": 2}, **LOVEDA_ONLY)
    first = run_pipeline(cfg, until="expressions")["expressions"]
    work = cfg.work_path
    written = sorted((work / "stages" / "expressions").rglob("*.json"))
    rules_file = {p: work / "stages" / "rules" / p.parent.name / p.name for p in written}
    assert len(written) > 2
    assert read_json(work / "reports" / "expressions.json") == first
    # Run again with nothing changed: nothing redone, the same report.
    inodes = {path: path.stat().st_ino for path in written}
    lines = journal_lines(work)
    assert run_expressions(cfg, overwrite=True) == first
    assert journal_lines(work) == lines
    # A rules file rewritten in another layout redoes its patch; the identical record keeps
    # its file as it is (same inode).
    relaid = rules_file[written[1]]
    relaid.write_text(json.dumps(read_json(relaid), indent=1))
    run_expressions(cfg)
    lines += 1
    assert journal_lines(work) == lines
    assert {path: path.stat().st_ino for path in written} == inodes
    # A lost record is written again; nothing else is redone.
    lost = written[0]
    lost.unlink()
    run_expressions(cfg)
    assert read_json(lost) == describe_patch(
        PatchRules.from_dict(read_json(rules_file[lost])), 2, 7
    )
    assert journal_lines(work) == lines + 1
    # A changed rules file (its groups and relations gone) redoes exactly its patch.
    edited = next(
        p for p in written if any(t["kind"] != "instance" for t in read_json(p)["targets"])
    )
    data = read_json(rules_file[edited])
    data["groups"], data["count_blockers"] = [], []
    data["relations"] = RelationTable.empty().to_dict()
    rules_file[edited].write_text(json.dumps(data))
    run_expressions(cfg)
    assert journal_lines(work) == lines + 2
    assert read_json(edited) == describe_patch(PatchRules.from_dict(data), 2, 7)
    assert not any(t["kind"] != "instance" for t in read_json(edited)["targets"])
    # Another cap, seed or rules configuration: refused until overwritten.
    for changed in (
        make_config(seed=7, expressions={"max_per_target": 1}, **LOVEDA_ONLY),
        make_config(seed=8, expressions={"max_per_target": 2}, **LOVEDA_ONLY),
    ):
        with pytest.raises(StageError, match="'expressions'.*different configuration"):
            run_expressions(changed)
    other_rules = make_config(seed=7, expressions={"max_per_target": 2}, **LOVEDA_ONLY)
    other_rules.rules.cluster_eps = other_rules.rules.cluster_eps + 5
    run_rules(other_rules, overwrite=True)
    with pytest.raises(StageError, match="'expressions'.*different configuration"):
        run_expressions(other_rules)
    # An overwrite starts from an empty folder and writes every record with the new cap.
    capped = make_config(seed=7, expressions={"max_per_target": 1}, **LOVEDA_ONLY)
    run_rules(capped, overwrite=True)
    stray = work / "stages" / "expressions" / "train" / "stray.json"
    stray.write_text("{}")
    capped.progress = True
    capsys.readouterr()
    report = run_expressions(capped, overwrite=True)
    assert not stray.exists()
    bar = capsys.readouterr().err
    assert "\rexpressions: 100%" in bar and "patch/s]" in bar
    for path in written:
        rules = PatchRules.from_dict(read_json(rules_file[path]))
        assert read_json(path) == describe_patch(rules, 1, 7)
    assert report["counts"]["written"] < first["counts"]["written"]
    assert report["units"] == first["units"] == len(written)
