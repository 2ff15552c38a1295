"""The docs against the code: what README.md and docs/ name (options, files, make targets) exists,
and the README's preset table gives each preset's parameter counts.

A renamed or removed option, script or target, or a retuned preset, leaves the prose behind; these
checks read the Markdown and the code (models on the meta device), and train nothing.
"""

import ast
import dataclasses
import re

from conftest import ROOT

import config

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TORCHRUN = {"--nproc_per_node", "--nnodes", "--rdzv_backend", "--rdzv_endpoint", "--rdzv_id", "--run-path"}
PLACEHOLDERS = {"--field"}  # "--field value": any field of the dataclasses
# Another tool's command line (`pip install --upgrade ...`, `python -m pytest --lf`): its options are its own
OTHER_TOOLS = re.compile(r"(?m)(?:^|`)[ \t]*(?:\S*python3? -m |\S*/)?"
                         r"(?:pip3?|pytest|git|wandb|nvidia-smi) [^`\n]*")


def script_options(path) -> set[str]:
    """The options a file's parser adds: each add_argument("--...") (or an alias of it, add = ...)."""
    tree = ast.parse(path.read_text())
    adders = {"add_argument"} | {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                                 and getattr(node.value, "attr", None) == "add_argument"
                                 for t in node.targets if isinstance(t, ast.Name)}
    return {"--help"} | {a.value for node in ast.walk(tree) if isinstance(node, ast.Call)
                         and (getattr(node.func, "attr", None) or getattr(node.func, "id", None)) in adders
                         for a in node.args if isinstance(a, ast.Constant)
                         and isinstance(a.value, str) and a.value.startswith("--")}


def project_options() -> set[str]:
    """Every option a command line of the project takes: the dataclasses' fields (train.py,
    sample.py, data.py and the scripts that pass them through), and each parser's own."""
    options = {"--preset"} | {f"--{f.name}" for cls in (config.ModelArgs, config.TrainArgs, config.SampleArgs)
                              for f in dataclasses.fields(cls)}
    for path in [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py")]:
        options |= script_options(path)
    return options


def test_every_option_the_docs_name_exists():
    known = project_options() | TORCHRUN | PLACEHOLDERS
    for doc in DOCS:
        named = set(re.findall(r"(?<![\w-])--[a-zA-Z][\w-]*", OTHER_TOOLS.sub("", doc.read_text())))
        assert named <= known, f"{doc.name} names options no command line has: {sorted(named - known)}"


def test_other_tools_command_lines_are_theirs_and_prose_is_ours():
    text = ("Run `pip install --upgrade torch` or\n.venv/bin/python -m pytest --lf -x\n"
            "the pytest suite takes --dim; `python train.py --dim 8`\n")
    named = re.findall(r"--\w+", OTHER_TOOLS.sub("", text))
    assert named == ["--dim", "--dim"]


def test_every_file_and_script_the_docs_name_exists():
    for doc in DOCS:
        text = doc.read_text()
        paths = set(re.findall(r"(?<![\w./-])((?:scripts|tests|docs)/\w+\.(?:py|md))", text))
        paths |= set(re.findall(r"python ([\w/]+\.py)", text))
        paths |= set(re.findall(r"^\| `([\w/]+\.\w+|\w+/)` \|", text, flags=re.M))  # the Layout table
        paths -= {"checkpoints/"}  # (git-ignored: made by the first run)
        missing = sorted(p for p in paths if not ((doc.parent / p).exists() or (ROOT / p).exists()))
        assert not missing, f"{doc.name} names files that are not there: {missing}"


def test_every_make_target_the_docs_name_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    for doc in DOCS:
        named = set(re.findall(r"`make ([\w-]+)", doc.read_text()))
        missing = sorted(named - targets)
        assert not missing, f"{doc.name} names make targets not in the Makefile: {missing}"


def test_the_readme_preset_table_gives_each_presets_parameter_counts():
    """| `name` ... | total / active | rows, against the model built on the meta device: a retuned
    preset (tiny's width, a vocabulary) changes its row too."""
    import torch

    from model import Llama4, count_parameters
    units = {"M": 1e6, "B": 1e9}
    rows = re.findall(r"^\| `([\w-]+)`[^\n]*\| ([\d.]+)([MB]) / ([\d.]+)([MB]) \|$",
                      (ROOT / "README.md").read_text(), flags=re.M)
    assert {r[0] for r in rows} == set(config.PRESETS)
    for name, total, unit, active, unit_active in rows:
        with torch.device("meta"):
            counts = count_parameters(Llama4(config.preset(name, config.ModelArgs)))
        for shown, u, key in ((total, unit, "total"), (active, unit_active, "active_per_token")):
            decimals = len(shown.split(".")[1]) if "." in shown else 0
            assert f"{counts[key] / units[u]:.{decimals}f}" == shown, (name, key, counts[key], shown + u)


def test_each_command_line_the_docs_show_takes_its_options():
    """`python train.py ...`, `make train ARGS="..."`, `python scripts/x.py ...`: each option belongs
    to that command (a script that passes model or training settings on takes those too)."""
    fields = {f"--{f.name}" for cls in (config.ModelArgs, config.TrainArgs) for f in dataclasses.fields(cls)}
    fields |= {"--preset", "--help"}
    takes = {"train": fields, "data": fields,
             "sample": {f"--{f.name}" for f in dataclasses.fields(config.SampleArgs)} | {"--help"}}
    for path in ROOT.glob("scripts/*.py"):
        passed_on = fields if "ModelArgs" in path.read_text() else set()  # config's parser, or train.py's
        takes[f"scripts/{path.stem}"] = script_options(path) | passed_on
    for doc in DOCS:
        text = doc.read_text().replace("\\\n", " ")
        blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
        lines = [line for block in blocks for line in block.splitlines()]
        lines += [" ".join(m.split()) for m in re.findall(r"`((?:python|make)\s[^`]+)`", text)]
        for line in lines:
            m = (re.search(r"(?:python|--) ((?:scripts/)?\w+)\.py\b(.*)", line)
                 or re.search(r"make (train|sample|gpu-check) ARGS=\"([^\"]*)", line))
            command = m and {"gpu-check": "scripts/gpu_check"}.get(m.group(1), m.group(1))
            if command not in takes:
                continue
            named = re.findall(r"(?<![\w-])--[a-zA-Z][\w-]*", m.group(2).split(" #")[0])
            wrong = [o for o in named if o not in takes[command] | PLACEHOLDERS]
            assert not wrong, f"{doc.name}: {line.strip()!r}: {command} has no {wrong}"


def test_every_readme_section_the_project_points_to_is_a_heading():
    """`(README, Name)`, `(README, "Name")` and `the README's Name section` in the code, requirements,
    Makefile and docs name a README heading exactly (backticks aside).

    Bug caught: requirements.txt sent a CPU user to "README, Quick start" for the CPU build of torch,
    which is under "The two commands" (Quick start is now "Quick start on a laptop CPU", without it)."""
    headings = {h.replace("`", "").strip() for h in
                re.findall(r"(?m)^#+ (.*)$", (ROOT / "README.md").read_text())}
    files = [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("*.txt"),
             ROOT / "Makefile", *DOCS[1:]]
    pointers = re.compile(r"README, \"?([^\")]+?)\"?\)|the README's ([A-Z][\w ]*?) section")
    for path in files:
        if path.name == "test_docs.py":  # (this test's own examples)
            continue
        for m in pointers.finditer(path.read_text()):
            name = m.group(1) or m.group(2)
            assert name in headings, f"{path.name} points to README section {name!r}, which is no heading"


def module_constant(name: str, module: str | None):
    """A top-level NAME = ... of the project's code (`module`'s, or the one file that sets it), from
    its source: literals, and sums or products of the file's other literal constants."""
    paths = [ROOT / f"{module}.py", ROOT / "scripts" / f"{module}.py"] if module else \
        [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py")]
    found = []
    for path in (p for p in paths if p.is_file()):
        tree = ast.parse(path.read_text())
        known, target = {}, None
        for node in tree.body:
            if not (isinstance(node, ast.Assign) and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)):
                continue
            try:
                known[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
            if node.targets[0].id == name:
                target = node.value
        if target is not None:
            code = compile(ast.Expression(target), path.name, "eval")
            found.append(eval(code, {"__builtins__": {}}, known))
    assert len(found) == 1, f"{name} is set in {len(found)} files, not one"
    return found[0]


def test_a_constant_the_docs_quote_in_seconds_has_that_value():
    """"N s ... (`module.NAME`" or "(`NAME`": the seconds the prose gives beside a constant are the
    constant's value in the code.

    Bug caught: docs/performance.md said evaluations run eagerly "until its evaluations have taken 10
    s in all (`train.COMPILE_EVAL_AFTER_S`)" after the threshold had become 4 s (the README's 4 s)."""
    quoted = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?) s\b[^`()]{0,40}\(`(?:(\w+)\.)?([A-Z][A-Z0-9_]+)`")
    seen = 0
    for doc in DOCS:
        for m in quoted.finditer(doc.read_text()):
            seconds, module, name = float(m.group(1)), m.group(2), m.group(3)
            seen += 1
            assert seconds == module_constant(name, module), \
                f"{doc.name}: {' '.join(m.group(0).split())!r}, but the code's {name} is " \
                f"{module_constant(name, module)}"
    assert seen >= 2  # the README's COMPILE_EVAL_AFTER_S and TRAIN_RESERVE_S at least
