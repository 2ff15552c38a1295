"""The docs against the code: what README.md and docs/ name (options, files, make targets) exists,
and the README's preset table gives each preset's parameter counts; and the code's own advice: each
option an error, warning or --help text names is its program's (or the program it names), and each
error is one line.

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
    adders = {"add_argument"}
    for node in ast.walk(tree):  # add = p.add_argument, or add, integer = p.add_argument, ... (compare.py)
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], (ast.Name, ast.Tuple)):
            names = getattr(node.targets[0], "elts", node.targets)
            values = getattr(node.value, "elts", [node.value])
            adders |= {n.id for n, v in zip(names, values, strict=False)
                       if isinstance(n, ast.Name) and getattr(v, "attr", None) == "add_argument"}
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
    scripts = {path.stem for path in ROOT.glob("scripts/*.py")}
    takes = {f"scripts/{name}" if name in scripts else name: options
             for name, options in options_by_program().items() if name != "torchrun"}
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


# The code's own advice: the options its messages name, and their one line


OPTION = re.compile(r"(?<![\w-])--[a-zA-Z][\w-]*")
# the program an option belongs to, named before it: "train.py's --lr", "sample.py --hf", "trained with",
# "torchrun --nproc_per_node"
NAMED_PROGRAM = re.compile(r"\b(?:(\w+)\.py|(train)(?:ed|ing)?|(torchrun))\b")
COMMAND_WORD = re.compile(OPTION.pattern + r"(?:=\S*)?")  # one word of a command line: "--data", "--lr={}"


def said(node) -> str:
    """A message's literal text, with {} for what is filled in (f-strings, +, a if c else b)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(said(v) if isinstance(v, ast.Constant) else "{}" for v in node.values)
    if isinstance(node, ast.BinOp):
        return said(node.left) + said(node.right)
    if isinstance(node, ast.IfExp):
        return said(node.body) + " " + said(node.orelse)
    return ""


def docstrings(tree) -> set[int]:
    return {id(node.body[0].value) for node in ast.walk(tree)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)}


def texts(source: str):
    """(line, text) of each string the code says, whole (an f-string, a + b, a if c else b as one) and
    docstrings aside (they are for readers, and config.py's quote typos): messages, help texts, fixes."""
    tree = ast.parse(source)
    skip, parts = docstrings(tree), set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.JoinedStr, ast.BinOp, ast.IfExp)) and said(node):
            parts |= {id(child) for child in ast.walk(node) if child is not node}
    strings = (ast.Constant, ast.JoinedStr, ast.BinOp, ast.IfExp)
    for node in ast.walk(tree):
        if id(node) not in skip | parts and isinstance(node, strings):
            if text := said(node):
                yield node.lineno, text


def messages(path):
    """(line, text) of each error's message: the first argument of an XError(...), sys.exit(...) or
    parser.error(...)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and node.args:
            name = getattr(node.func, "attr", None) or getattr(node.func, "id", None) or ""
            if name.endswith("Error") or name in ("error", "exit"):
                yield node.lineno, said(node.args[0])


def options_by_program() -> dict[str, set[str]]:
    """Each program's options, by name (train, data, sample, each script's stem, torchrun): a script that
    passes model or training settings on takes those too."""
    fields = {f"--{f.name}" for cls in (config.ModelArgs, config.TrainArgs) for f in dataclasses.fields(cls)}
    fields |= {"--preset", "--help"}
    takes = {"train": fields, "data": fields,
             "sample": {f"--{f.name}" for f in dataclasses.fields(config.SampleArgs)} | {"--help"}}
    for path in ROOT.glob("scripts/*.py"):
        passed_on = fields if "ModelArgs" in path.read_text() else set()  # config's parser, or train.py's
        takes[path.stem] = script_options(path) | passed_on
    return takes | {"torchrun": TORCHRUN}


def misnamed(source: str, prog: str | None, takes: dict[str, set[str]], known: set[str]):
    """(line, option, text) of each option a string of `source` names that is not its program's
    (`prog`; None: a module the programs share, where any program's does) nor the program's named
    before it. A command line's one word ("--data", f"--lr={lr}") and another tool's command
    (OTHER_TOOLS: git's, nvidia-smi's) are theirs."""
    for line, text in texts(source):
        if COMMAND_WORD.fullmatch(text):
            continue
        text = OTHER_TOOLS.sub("", text)
        for m in OPTION.finditer(text):
            named = ["".join(g) for g in NAMED_PROGRAM.findall(text[:m.start()]) if "".join(g) in takes]
            owners = [prog] + named[-1:] if prog else []
            if not (m.group() in known and (not owners or any(m.group() in takes[o] for o in owners))):
                yield line, m.group(), text


def test_every_option_a_message_names_is_its_programs():
    """An option named in an error, a warning or a help text exists: in a program's file (train.py,
    sample.py, data.py, scripts/) it is that program's, or that of the program named before it in
    the message ("train.py's --lr", "sample.py --hf", "trained with --vision"); in a module the
    programs share, some program's. A rename leaves no advice behind.

    Bug caught: compare.py's own options (--minutes, --out) were not seen as its (its add_argument
    has an alias made in a tuple assignment), so the docs could have named them for any script."""
    takes, known = options_by_program(), project_options() | TORCHRUN | {"--name", "--option"}  # (the form)
    assert {"--minutes", "--out"} <= takes["compare"]
    wrong = [f"{path.relative_to(ROOT)}:{line} {option}: {text.strip()[:100]!r}"
             for path in [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py")]
             for line, option, text in misnamed(path.read_text(), path.stem if path.stem in takes else None,
                                                takes, known)]
    assert not wrong, "messages name options their program lacks:\n" + "\n".join(wrong)


def test_another_tools_options_in_the_code_are_its_own():
    """A command the code runs (git's --format=%H, nvidia-smi's --query-gpu, torchrun's
    --nproc_per_node) or one word of a command line for another program (f"--lr={lr}" in an argv for
    train.py) names options that are not the program's own; an option the program lacks is still found.

    Bug caught: each of these was "messages name options their program lacks" (only the docs took
    OTHER_TOOLS, and a command line's word counted only as "--data", not "--lr=...")."""
    source = ("import subprocess, sys\n"
              "subprocess.run(['git', 'log', '-1', '--format=%H'])\n"
              "subprocess.run('nvidia-smi --query-gpu=memory.used --format=csv', shell=True)\n"
              "argv = [sys.executable, 'train.py', f'--lr={3e-4}', '--max_steps=10']\n"
              "HELP = 'runs under torchrun --nproc_per_node N'\n"
              "sys.exit('compare.py: error: --no_such is not an option')\n")
    takes, known = options_by_program(), project_options() | TORCHRUN
    assert [(line, option) for line, option, _ in misnamed(source, "compare", takes, known)] == \
        [(6, "--no_such")]


def test_every_error_message_is_one_line():
    """README: every error is one line. No literal part of an error's message holds a newline.

    Bug caught: bench_data.py's failed prepare() subprocess exited with "error: ... failed:" and the
    child's whole stderr after it, so the error was not the last line."""
    broken = [f"{path.relative_to(ROOT)}:{line}: {text[:80]!r}"
              for path in [*ROOT.glob("*.py"), *ROOT.glob("scripts/*.py")]
              for line, text in messages(path) if "\n" in text.strip()]
    assert not broken, "errors of more than one line:\n" + "\n".join(broken)
