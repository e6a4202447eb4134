"""A user's own model family, loaded with ``--model-spec``: the README's example file runs
through the suite (gradients, memory, FLOPs, baselines, timing, the report), its analytic
checks skip with the reason, and a bad spec is one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from ac_bench.models import FAMILIES, FLAVORS, VARIANTS, load_family_spec
from tests.helpers import ROOT, registries_kept, run_pytest

SPEC = "examples.my_family:SPEC"
FLAVOR = "my-gpt-tiny"


def test_example_family_runs_through_the_suite(tmp_path):
    """Every module but what runs at ``tiny`` whatever the family (the compile-budget tests and
    their gate, the FSDP2 launch):
    measured, gated against baselines it writes, then compared against them, timed, reported."""
    common = ["--model-spec", SPEC, "--flavor", FLAVOR, "--baselines-dir", str(tmp_path), "-q", "-rs"]
    first = run_pytest("bench/", *common, "--benchmark-skip", "--ignore=bench/test_compile_budget.py",
                       "-m", "not distributed", "-k", "not compile_budget",
                       "--update-baselines", "--benchmark-json", str(tmp_path / "run.json"))
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "family 'my-gpt' declares no analytic model" in first.stdout
    assert "passed" in first.stdout and " failed" not in first.stdout
    entries = json.loads((tmp_path / "cpu" / "figures.json").read_text())["entries"]
    assert sorted(e for e in entries if e.startswith(f"{FLAVOR}-")) == sorted(f"{FLAVOR}-{v}" for v in _variants())
    # The gate against those baselines, and the timed step (one round each).
    second = run_pytest("bench/test_baselines.py", "bench/test_speed.py", *common, "--benchmark-min-rounds", "1",
                        "-k", "none or full", "--benchmark-disable-gc")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "no entry" not in second.stdout and "no baselines" not in second.stdout, second.stdout[-3000:]
    report = subprocess.run([sys.executable, "-m", "ac_bench.report", "table", str(tmp_path / "run.json")], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and FLAVOR in report.stdout, report.stdout + report.stderr


def _variants() -> list[str]:
    return list(VARIANTS)


@pytest.mark.parametrize(("spec", "says"), [
    ("examples.nowhere:SPEC", "cannot import 'examples.nowhere': ModuleNotFoundError"),
    ("examples.my_family:NOPE", "has no attribute 'NOPE'"),
    ("examples.my_family:MyGPT", "MyGPT is a type, not an ac_bench.models.families.Family"),
    ("not a spec", "write it as package.module:NAME"),
])
def test_bad_spec_is_one_line(spec, says):
    with pytest.raises(ValueError) as info:
        load_family_spec(spec)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_bad_spec_option_is_a_usage_error():
    result = run_pytest("bench/", "--collect-only", "-q", "--model-spec", "examples.my_family:NOPE")
    assert result.returncode == 4, result.stdout + result.stderr
    assert "--model-spec 'examples.my_family:NOPE'" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def registries_restored():
    """After the test, the family and flavor registries as they were before it (``tests.helpers.registries_kept``):
    a family registered here would otherwise be among the valid names that later tests of this
    process print."""
    with registries_kept():
        yield


def test_loading_registers_the_family_and_its_flavors_once(registries_restored):
    family = load_family_spec(SPEC)
    assert FAMILIES["my-gpt"] is family and FLAVORS[FLAVOR].family == "my-gpt"
    assert load_family_spec(SPEC) is family  # a second load (xdist workers, reruns) is a no-op


def test_a_run_about_a_users_sdpa_only_family_measures_that_family_only(tmp_path):
    """A family that declares only ``sdpa``: its variants run and pass, the checks that compare
    with eager attention skip saying so (no error), and the suite's own ``tiny`` model (the
    compile-budget sweep, the FSDP2 launch) is neither measured nor written into the user's
    baselines: those tests skip with the reason."""
    text = (ROOT / "examples" / "my_family.py").read_text().replace('"my-gpt', '"sdpa-gpt')
    text = text.replace('SPEC = Family("sdpa-gpt", build=MyGPT,', 'SPEC = Family("sdpa-gpt", build=MyGPT, attentions=("sdpa",),')
    assert 'attentions=("sdpa",)' in text, "examples/my_family.py no longer declares SPEC as expected"
    (tmp_path / "sdpa_family.py").write_text(text)
    result = run_pytest(str(ROOT / "bench"), "--model-spec", "sdpa_family:SPEC", "--baselines-dir", "baselines",
                        "--update-baselines", "-m", "not timing", "-rs", "-q",
                        "-k", "none-sdpa or full-sdpa or offload or budget_1.0 or w2-full or close_to_eager",
                        cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert " failed" not in result.stdout and " error" not in result.stdout, result.stdout[-4000:]
    assert "family 'sdpa-gpt' has no eager attention" in result.stdout, result.stdout[-4000:]
    assert "this run is about the --model-spec family sdpa-gpt" in result.stdout, result.stdout[-4000:]
    entries = json.loads((tmp_path / "baselines" / "cpu" / "figures.json").read_text())["entries"]
    assert sorted(entries) == ["sdpa-gpt-tiny-full-sdpa", "sdpa-gpt-tiny-none-sdpa", "sdpa-gpt-tiny-offload-sdpa"], entries


def test_a_family_whose_build_raises_is_one_line_naming_the_spec():
    """A builder that raises (tests/families.py's BROKEN_BUILD: its weights file is missing):
    one usage error naming the --model-spec, the flavor and the exception, before anything is
    collected or measured; it was a full traceback in every test of every variant."""
    result = run_pytest("bench/", "-q", "--model-spec", "tests.families:BROKEN_BUILD", "-k", "none-sdpa")
    assert result.returncode == 4, result.stdout[-3000:] + result.stderr[-3000:]
    assert [line for line in result.stderr.splitlines() if line.strip()] == [
        "ERROR: --model-spec 'tests.families:BROKEN_BUILD': building flavor 'broken-gpt-tiny' with eager attention "
        "raised FileNotFoundError: no weights for broken-gpt-tiny at /nowhere/weights.pt; fix the family's build "
        "function"], result.stderr
    assert "Traceback" not in result.stdout + result.stderr and "collected" not in result.stdout


def test_a_build_that_fails_only_on_the_meta_device_is_no_refusal(monkeypatch):
    """The check builds on the meta device first; a builder that reads a value while building
    (which the meta device cannot give) is tried on the run's device before it is refused."""
    from ac_bench.cases import build_problem
    from ac_bench.models import Family, Flavor
    from ac_bench.models.transformer import build_transformer

    def reads_a_value(flavor, attention, dropout=0.0):
        model = build_transformer(flavor, attention, dropout)
        model.blocks[0].attn.ln.weight.sum().item()  # no value on the meta device: raises there
        return model

    def raises(flavor, attention, dropout=0.0):
        raise ValueError("bad\nconfig")

    flavor = Flavor("meta-gpt-tiny", d_model=32, n_heads=2, depth=3, batch=2, seq_len=16, family="meta-gpt")
    monkeypatch.setitem(FAMILIES, "meta-gpt", Family("meta-gpt", build=reads_a_value, flavors=(flavor,)))
    assert build_problem(flavor, "sdpa", "cpu") is None
    monkeypatch.setitem(FAMILIES, "meta-gpt", Family("meta-gpt", build=raises, flavors=(flavor,)))
    assert build_problem(flavor, "sdpa", "cpu", dropout=0.1) == (
        "building flavor 'meta-gpt-tiny' with sdpa attention and dropout 0.1 raised ValueError: bad config")


def _planned_peaks(text: str) -> tuple[int, int]:
    """(measured, predicted) bytes from a plan line: ``measured peak 3.96 MiB (4148632 B, predicted 4148632``."""
    found = re.search(r"measured peak [\d.]+ [KMG]iB \((\d+) B, predicted (\d+)", text)
    assert found, text
    return int(found[1]), int(found[2])


def test_plan_takes_a_model_spec_in_a_real_process(tmp_path):
    """``python -m ac_bench.report plan --model-spec examples.my_family:SPEC``: the family's first
    flavor by default, the plan measured at its predicted peak, and a Markdown file whose
    Regenerate line repeats the spec (without it the flavor is unknown)."""
    markdown = tmp_path / "plan.md"
    proc = subprocess.run([sys.executable, "-m", "ac_bench.report", "plan", "--model-spec", SPEC, "--attention",
                           "eager", "--budget-gib", "0.004", "--markdown", str(markdown)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith(f"plan: {FLAVOR} eager, budget 0.004 GiB"), proc.stdout
    measured, predicted = _planned_peaks(proc.stdout)
    assert measured == predicted <= 0.004 * 2 ** 30, proc.stdout
    assert (f"Regenerate: `python -m ac_bench.report plan --model-spec {SPEC} --flavor {FLAVOR} --attention eager "
            f"--budget-gib 0.004 --device cpu --markdown {markdown}`") in markdown.read_text(), markdown.read_text()


def test_block_plan_and_sweep_take_a_model_spec(registries_restored, capsys):
    """``plan --space blocks`` (the MILP) on the family's model, measured at its predicted peak;
    ``sweep`` over two spawned workers, each of which registers the family itself, with the
    analytic columns empty (the family declares no analytic model) instead of a crash."""
    from ac_bench.cli.report import main as report_main
    pytest.importorskip("pulp")
    assert report_main(["plan", "--space", "blocks", "--model-spec", SPEC, "--flavor", FLAVOR,
                        "--budget-gib", "0.0032"]) == 0
    out = capsys.readouterr().out
    measured, predicted = _planned_peaks(out)
    assert measured == predicted <= 0.0032 * 2 ** 30 and "blocks_nn3" not in out, out
    assert report_main(["sweep", "--model-spec", SPEC, "--flavor", FLAVOR, "--seq-lens", "32,64", "--variants",
                        "none-sdpa,full-sdpa", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith(("none-sdpa ", "full-sdpa "))]
    assert len(rows) == 4 and all(row[6] == "-" for row in rows), out  # kept MiB (analytic): none
    assert [row[7] for row in rows if row[0] == "none-sdpa"] == ["+0.0%", "+0.0%"], out  # measured overhead


@pytest.mark.parametrize(("argv", "says"), [
    (["analytic", "--model-spec", SPEC], f"flavor {FLAVOR}: family 'my-gpt' declares no analytic model"),
    (["report", "plan", "--model-spec", "tests.families:NO_BLOCKS", "--budget-gib", "1"],
     "--model-spec 'tests.families:NO_BLOCKS': the model of flavor 'noblocks-gpt-tiny' (NoBlocks) has no `blocks`"),
    (["sweep", "--model-spec", "tests.families:NO_BLOCKS", "--seq-lens", "16"],
     "--model-spec 'tests.families:NO_BLOCKS': the model of flavor 'noblocks-gpt-tiny' (NoBlocks) has no `blocks`"),
    (["report", "plan", "--model-spec", SPEC, "--flavor", "nope", "--budget-gib", "1"],
     ("unknown flavor 'nope'; valid names: seed, small, tiny, llama-small, llama3-8b-4l, ", f", {FLAVOR}\n")),
    (["report", "frontier", "--model-spec", "examples.nowhere:SPEC"], "cannot import 'examples.nowhere'"),
    (["sweep", "--model-spec", "examples.my_family:NOPE"], "has no attribute 'NOPE'"),
])
def test_a_model_spec_command_refuses_in_one_line(registries_restored, capsys, argv, says):
    """Each command that takes ``--model-spec``: a bad spec, an unknown flavor and a family
    without an analytic model are one line, ``python -m ac_bench.<command>: error: ...``, status 2."""
    from ac_bench.cli.analytic import main as analytic_main
    from ac_bench.cli.report import main as report_main
    from ac_bench.cli.sweep import main as sweep_main
    main = {"analytic": analytic_main, "report": report_main, "sweep": sweep_main}[argv[0]]
    assert main(argv[1:]) == 2
    err = capsys.readouterr().err
    prefix = f"python -m ac_bench.{argv[0]}{' ' + argv[1] if argv[0] == 'report' else ''}: error: "
    assert err.startswith(prefix) and err.count("\n") == 1, err
    assert all(part in err for part in (says if isinstance(says, tuple) else (says,))), err


def test_plan_at_scale_takes_a_model_spec(registries_restored, capsys, tmp_path):
    """``plan --model-spec S --world-size 8``: the user's family estimated as one rank of FSDP2 over
    8 GPUs, every policy, as for the published shapes; the Markdown's Regenerate line repeats the
    spec and the flavor."""
    from ac_bench.cli.report import main as report_main
    markdown = tmp_path / "scale.md"
    assert report_main(["plan", "--model-spec", SPEC, "--world-size", "8", "--budget-gib", "0.002", "--markdown",
                        str(markdown)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{FLAVOR} (3 layers, hidden 64, 4 heads), FSDP2 over 8 ranks"), out
    assert "\nplan: " in out and "| none |" in out and "| full |" in out, out
    assert f"--model-spec {SPEC} --flavor {FLAVOR} --world-size 8 --budget-gib 0.002" in markdown.read_text()


def test_a_family_whose_forward_raises_is_one_line_naming_its_line(tmp_path):
    """``plan --model-spec`` of a family that builds but whose forward cannot run (5 heads of a
    width of 64: the view does not fit): one line naming the spec, the family's file and line,
    and the error (a 90-line traceback before)."""
    source = (ROOT / "examples" / "my_family.py").read_text()
    (tmp_path / "bad_forward.py").write_text(source.replace("n_heads=4", "n_heads=5"))
    result = subprocess.run([sys.executable, "-m", "ac_bench.report", "plan", "--model-spec", "bad_forward:SPEC",
                             "--budget-gib", "1"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("python -m ac_bench.report plan: error: --model-spec 'bad_forward:SPEC': the family's "
                               "code raised RuntimeError at bad_forward.py:25 (q, k, v = self.qkv(x).view("), lines[0]
    assert "shape '[1, 128, 3, 5, 12]' is invalid" in lines[0] and lines[0].endswith('"A model family")'), lines[0]
