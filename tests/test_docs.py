"""The examples in docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib
import re
import shlex
import warnings

import click
import pytest

from lakecurate.cli import main
from lakecurate.names import builtin_column

from .conftest import REPO

MODULES = ["columns", "concepts", "dedup", "evaluate", "names", "neardup", "options", "report", "signals", "sqlcheck"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str):
    module = importlib.import_module(f"lakecurate.{name}")
    result = doctest.testmod(module)
    assert result.failed == 0 and result.attempted > 0, module.__name__


# --------------------------------------------------------------------------- README and --help, as a new user pastes them
README = (REPO / "README.md").read_text()


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a markdown heading: lower case, punctuation (backticks, ':', '(', '/',
    '.', ',') gone, each space a '-' (underscores and hyphens kept)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_github_anchor():
    assert github_anchor("Browse and review: `lakecurate serve` (issue 21: `lakecurate/serve.py`)") == \
        "browse-and-review-lakecurate-serve-issue-21-lakecurateservepy"


def test_readme_links_resolve():
    """Every relative link of README names a file that exists, and its #anchor a heading of that file
    (a link to docs/benchmarks.md#browse-and-review-lakecurate-serve matched no heading)."""
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    assert links
    for link in links:
        if "://" in link or link.startswith("mailto:"):
            continue
        path, _, anchor = link.partition("#")
        target = REPO / path if path else REPO / "README.md"
        assert target.exists(), link
        if anchor:
            text = re.sub(r"```.*?```", "", target.read_text(), flags=re.DOTALL)  # no '# comment' of a code block
            headings = {github_anchor(h) for h in re.findall(r"^#{1,6}\s+(.*)$", text, re.MULTILINE)}
            assert anchor in headings, f"{link}: no heading of {path or 'README.md'} has that anchor"


def test_readme_models_resolve():
    """Every model README passes to embed is one encoders' parser takes (lake.embed("ViT-B-32/openai")
    was refused: a model and its weights are ARCH:TAG)."""
    from lakecurate.encoders import resolve

    models = re.findall(r"\.embed\(\s*[\"']([^\"']+)[\"']", README)
    models += re.findall(r"lakecurate(?: --\S+(?: [^-\s]\S*)?)* (?:embed|demo)\b[^\n#]*?--model ([^\s`]+)", README)
    assert "offline" in models and "ViT-B-32" in models
    for model in set(models):
        if model.isupper() or model.startswith("$"):  # a placeholder (M, MODEL)
            continue
        resolve(model)  # raises EncoderError on a name it does not take


def _commands(text: str):
    """The `lakecurate ...` commands of ``text``'s code blocks (a `$ ` prompt and a `# comment`
    stripped; `a && b` and `a | b` are two)."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            for part in re.split(r"\s(?:&&|\||;)\s", line):
                if part.strip().startswith("lakecurate ") and "..." not in part.split("#")[0]:  # (elided: a sketch)
                    yield part.strip()


def _parse(command: str) -> click.Command:
    """Parse ``command`` as the CLI would (required options, known options, their types); runs nothing.
    A path that must exist and does not (the reader's own files) is taken."""
    args = shlex.split(command, comments=True)[1:]
    ctx = main.make_context("lakecurate", args)
    cmd: click.Command = main
    while isinstance(cmd, click.Group):
        with warnings.catch_warnings():  # click 8.2 deprecates protected_args (9: all in args)
            warnings.simplefilter("ignore", DeprecationWarning)
            rest = [*getattr(ctx, "protected_args", []), *ctx.args]
        _name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None, command
        try:
            ctx = sub.make_context(_name, rest, parent=ctx)
        except click.BadParameter as exc:
            if "does not exist" not in str(exc):
                raise
        cmd = sub
    return cmd


def _help_examples() -> list[str]:
    out = []

    def walk(cmd: click.Command) -> None:
        for line in (cmd.help or "").splitlines():
            if line.strip().startswith("Example: "):
                out.append(re.split(r"\s{2,}", line.strip().removeprefix("Example: "))[0])  # "   (or ...)": a remark
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(main)
    return out


def test_readme_commands_parse():
    """Every `lakecurate` command of README parses: no option the command lacks, none it needs missing
    (`lakecurate evaluate ... --view V` lacked --eval-set: "Missing option '--eval-set'")."""
    commands = list(_commands(README))
    assert len(commands) > 50
    bad = []
    for command in commands:
        try:
            _parse(command)
        except click.exceptions.Exit:
            pass
        except (click.ClickException, ValueError) as exc:
            bad.append(f"{command}\n    {exc}")
    assert not bad, "\n".join(bad)


def test_help_examples_run_as_written():
    """Every --help's Example parses (as above), and no `feature add` example names a column a built-in
    stage writes (`feature add ./lake cap_chars ...`: cap_chars is a caption signal's, refused)."""
    examples = _help_examples()
    assert len(examples) >= 30
    for example in examples:
        for part in re.split(r"\s&&\s", example):
            cmd = _parse(part)
            if cmd.name == "add" and " feature add " in f" {part} ":
                args = shlex.split(part)
                name = args[args.index("add") + 2]
                assert not builtin_column(name), f"{part}: {name} is a built-in column"
                assert "--input" in args, part  # a feature names the columns it reads


def test_review_examples_use_real_ids():
    """Row ids are 16 hex digits: an example review of p0000012 could name no row."""
    for text in (README, *_help_examples()):
        for command in re.findall(r"lakecurate review \S+ ((?:\S+ )+?)--", text):
            assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in command.split()), command


def test_slash_model_name_says_arch_tag():
    """open_clip lists weights as ViT-B-32/openai; lakecurate takes ViT-B-32:openai, and says so."""
    from lakecurate.encoders import EncoderError, resolve

    with pytest.raises(EncoderError, match=r"write ARCH:TAG \(e.g. ViT-B-32:openai; here 'ViT-B-32:openai'\)"):
        resolve("ViT-B-32/openai")
