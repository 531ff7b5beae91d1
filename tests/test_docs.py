"""The documentation cannot rot: every ``spcl`` command in the README and ``docs/`` parses with the
real command line (its flags and config fields exist, its values are valid), the README's quick
start runs on tiny data, every page the README links exists, and nothing points at a document
outside the repository."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from spcl.cli import _config_from_args, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_OPTIONAL = re.compile(r"\s\[[^\]]*\]")  # "[--rerank]": an optional part of a usage line


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, flags=re.S)


def spcl_commands(path: Path) -> list[tuple[str, list[str]]]:
    """(the line as written, its spcl arguments) of every spcl command in the page's shell blocks and
    in its inline code that starts with ``spcl COMMAND``."""
    found = []
    text = path.read_text()
    for span in re.findall(r"(?<!`)`(spcl [a-z][a-z-]*(?: [^`]*)?)`(?!`)", re.sub(r"```.*?```", "", text, flags=re.S)):
        span = " ".join(span.split())
        found.append(("inline: " + span, shlex.split(_OPTIONAL.sub("", span))[1:]))
    for block in shell_blocks(text):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(_OPTIONAL.sub("", line), comments=True)
            for i, word in enumerate(words):
                if word == "spcl" and (i == 0 or words[i - 1] == "-m"):
                    found.append((line.strip(), words[i + 1:]))
                    break
    return found


COMMANDS = [(f"{page.relative_to(ROOT)}: {line}", argv) for page in PAGES for line, argv in spcl_commands(page)]


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) >= 50
    assert {argv[0] for _, argv in COMMANDS if argv} >= {"train", "eval", "extract", "search", "export", "demo"}


def _command_parser(parser, argv: list[str]):  # noqa: ANN001, ANN202 (argparse internals)
    """The sub-parser of ``argv``'s command."""
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert argv[0] in sub.choices, f"no command {argv[0]!r}"
    return sub.choices[argv[0]]


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[f"{i}: {c[0][:80]}" for i, c in enumerate(COMMANDS)])
def test_every_documented_command_parses(where: str, argv: list[str]) -> None:
    """A full command (a shell block) parses, and a training command builds its config; inline code may
    name part of a command (``spcl eval --protocol dg``): its command and every flag it names exist."""
    parser = build_parser()
    if not argv or argv[0].startswith("-"):
        return
    command = _command_parser(parser, argv)
    known = {option for action in command._actions for option in action.option_strings}
    flags = [w.split("=")[0] for w in argv if w.startswith("--")]
    assert set(flags) <= known, f"{where}: unknown flags {sorted(set(flags) - known)}"
    if ": inline: " in where or "--help" in argv:
        return
    args = parser.parse_args(argv)
    if argv[0] == "train":  # the config the flags make: fields that exist, values in range
        _config_from_args(args, args.mode)


def test_readme_is_short_and_its_links_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert readme.splitlines()[3:5] == ["make demo   # set up .venv, generate the synthetic two-domain data, train "
                                        "source-only and SpCL on the CPU, print the table",
                                        "make test   # set up .venv and run the test suite"]
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), target


def test_no_reference_to_a_document_outside_the_repository() -> None:
    for folder in ("src", "tests", "bench", "docs"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in (".py", ".md", ".yaml") and path.name != Path(__file__).name:
                assert "SPEC" not in path.read_text(), path
    for path in ROOT.glob("*.md"):
        assert "SPEC" not in path.read_text(), path


def test_method_anchors_named_in_the_code_exist() -> None:
    anchors = set(re.findall(r"\{#([a-z0-9-]+)\}", (ROOT / "docs" / "method.md").read_text()))
    named = set()
    for folder in ("src", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            named |= set(re.findall(r"docs/method\.md#([a-z0-9-]+)", text))
            for group in re.findall(r"docs/method\.md#[a-z0-9-]+((?:, #[a-z0-9-]+)+)", text):
                named |= set(re.findall(r"#([a-z0-9-]+)", group))
    assert named and named <= anchors, named - anchors


def test_readme_quick_start_runs_on_tiny_data(data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's quick start after the demo, on the tiny synthetic target, with a tiny schedule."""
    monkeypatch.chdir(tmp_path)  # what the commands write by default lands here
    readme = (ROOT / "README.md").read_text()
    quick = next(b for b in shell_blocks(readme) if "spcl train usl" in b)
    query = next((data_root / "tgt" / "query").glob("*.jpg"))
    replace = {
        "path/to/my_data": str(data_root / "tgt"), "runs/mine": str(tmp_path / "mine"),
        "crops/": str(data_root / "tgt" / "bounding_box_test"), "person.jpg": str(query),
        "model.onnx": str(tmp_path / "model.onnx"),
    }
    tiny = ["--height", "32", "--width", "16", "--arch", "resnet18", "--no-pretrained", "--epochs", "1", "--iters", "1",
            "--data.workers", "0", "--device", "cpu", "--eval.every", "0", "--optim.batch_size", "16",
            "--pseudo.min_samples", "2", "--images-per-bn", "0"]
    ran = []
    for line in quick.splitlines():
        words = shlex.split(line, comments=True)
        if not words or words[:2] == ["spcl", "demo"]:  # the demo is make demo's job (17 minutes)
            continue
        argv = []
        for word in words[1:]:
            for old, new in replace.items():
                word = word.replace(old, new)
            argv.append(word)
        if argv[0] == "train":
            argv += tiny
        elif argv[0] in ("eval", "search"):
            argv += ["--device", "cpu"]
        assert main(argv) == 0, line
        ran.append(argv[0])
    assert ran == ["train", "eval", "search", "export"]
    assert (tmp_path / "model.onnx").is_file() and (tmp_path / "search").is_dir()


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_architecture_recipes_run(data_root: Path, tmp_path: Path) -> None:
    """The three extension recipes of docs/architecture.md, executed as written, then used."""
    import torch

    from spcl.config import load_config
    from spcl.data import load, registered_datasets
    from spcl.memory import registered_memories
    from spcl.models import build_encoder
    from spcl.training import Trainer

    blocks = _python_blocks(ROOT / "docs" / "architecture.md")
    assert len(blocks) == 3
    for block in blocks:
        exec(compile(block, "docs/architecture.md", "exec"), {"__name__": "recipe"})
    assert "mycity" in registered_datasets() and "cluster-reliable" in registered_memories()
    for part, pids in (("train", (7, 7, 9)), ("query", (7,)), ("gallery", (7, 9))):
        for i, pid in enumerate(pids):
            (tmp_path / "mycity" / part).mkdir(parents=True, exist_ok=True)
            (tmp_path / "mycity" / part / f"{pid}_{i % 2}_{i}.jpg").write_bytes(b"")
    city = load("mycity", tmp_path)
    assert [pid for _, pid, _ in city.train] == [0, 0, 1] and city.query[0][1:] == (7, 0)
    encoder = build_encoder("tiny_cnn", pretrained=False).eval()
    assert encoder(torch.zeros(2, 3, 32, 16)).shape == (2, 64)
    config = load_config(overrides={
        "mode": "usl", "data.target": str(data_root / "tgt"), "data.height": 32, "data.width": 16, "data.workers": 0,
        "model.arch": "tiny_cnn", "model.pretrained": "none", "model.images_per_bn": 0, "memory.kind": "cluster-reliable",
        "optim.batch_size": 16, "optim.iters": 1, "optim.epochs": 1, "pseudo.min_samples": 2, "pseudo.k1": 6,
        "pseudo.eps": 0.7, "eval.every": 0, "device": "cpu", "output": str(tmp_path / "run"),
    })
    trainer = Trainer(config, log=lambda _: None, progress=False)
    assert trainer.labeler is not None
    history = trainer.fit()
    assert len(history) == 1
