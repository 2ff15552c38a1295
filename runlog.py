"""What a run leaves to read: metrics.jsonl, the Weights & Biases run, and loss plots. train.py
writes through it; scripts/plot_runs.py and scripts/compare.py read through it.

What it holds, one section each, in this order:
    caches              writable_home_dirs: matplotlib's and W&B's cache folders, where the home
                        folder's are unwritable
    metrics and W&B     start_wandb: --wandb_mode (auto: WANDB_MODE where set, else online when
                        logged in, else offline), never crashing or hanging a run; Metrics:
                        metrics.jsonl in the run folder (one JSON line per log step and per
                        evaluation), mirrored to W&B; resumed_records, unfinished_wandb (what a
                        resume goes on with)
    reading runs back   read_metrics: (train records, val records) of a run folder; run_label
    plots               plot_runs / plot_loss: training loss and validation bits/byte of one run or
                        several; incomparable (what makes overlaid curves mislead)

Records: {"kind": "train", "step", "loss", "lm_loss", "aux_loss", "z_loss", "lr", "grad_norm",
"tokens_per_s", "mfu", "tokens", "minutes", "skipped_steps", "expert_share", "router_entropy",
"window_steps", "bad_streak"} and {"kind": "val", "step", "minutes", "tokens", "nats_per_token",
"perplexity", "bits_per_byte", "val_tokens", "val_bytes", "val_seconds"}; `tokens` is tokens trained
on. A train
record holds the means over the `window_steps` steps before it: --log_every of them, fewer in the
last record of a run stopped early (by --max_steps, the budget or a signal). Skipped (non-finite)
steps are left out of the means; `lr` is the last step's, and `grad_norm` (before clipping) the last
applied step's: NaN where every step of the window was skipped; `skipped_steps` is the run's total
so far, not the window's; `bad_streak` the most in a row in the window (a streak from the window
before counted whole): --max_bad_steps of them stop the run right after the record.

How this departs from the obvious version: the log survives what a run goes through. A torn last
line (a crash or a full disk during the append) is dropped with a warning when the file is read; a
resumed run rewrites the file with the records up to its checkpoint (and says how many it dropped),
so its records are those of an uninterrupted run; a full disk is one line (StorageError). W&B's
history cannot be rewritten, and a resumed W&B run drops what is logged at a step below its last one,
so each record is logged with its optimizer step as a value (`step`, the x axis of every chart) rather
than as W&B's own step: the evaluation a signal put off, logged at a step W&B already holds a train
record of, is kept. What a run killed with -9 had logged is unknown (W&B may have kept all of it or
nothing): the resumed run logs again what it replaces in metrics.jsonl, so none is missing in W&B,
and a record that reached W&B before the crash is there twice, at the same step; so is the partial
record of a window a signal cut short, beside the whole one the resumed run writes. W&B cannot
resume an offline run (syncing a second offline folder of one id replaces the history): a resume
of an offline session, or one offline now, is a new W&B run that gets the whole history; so is one
under another entity than its checkpoint's W&B run's (an id is per entity); say_superseded names the
older offline folders it makes superfluous to upload. Each train and val row holds `tokens` beside
`step`: the x axis that compares runs of other batch sizes.
"""

import json
import netrc
import os
import shlex
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlsplit

import config
import storage
import tokenizer
from errors import RunError, StorageError, first_line

X_LABELS = {"tokens": "tokens seen", "step": "optimizer step", "minutes": "wall-clock minutes"}
STEP = "step"  # the x axis of the W&B charts: the optimizer step, logged as a value (see Metrics)
TOKENS = "tokens"  # the tokens the steps so far read, in each train and val row of W&B: the x axis to
# compare runs by
UNFINISHED = "wandb_unfinished.txt"  # the W&B runs whose finish failed, an id a line (Metrics.finish)

# ---------------------------------------------------------------------------------------------
# Where matplotlib and W&B keep their caches

# Each variable, and the folders it stands for: (XDG variable, its default under the home folder)/name
HOME_DIRS = {"MPLCONFIGDIR": [("XDG_CONFIG_HOME", ".config", "matplotlib"),
                              ("XDG_CACHE_HOME", ".cache", "matplotlib")],
             "WANDB_CACHE_DIR": [("XDG_CACHE_HOME", ".cache", "wandb")]}


def writable_home_dirs(*variables: str) -> None:
    """Point each of `variables` (MPLCONFIGDIR, WANDB_CACHE_DIR) that is unset, and whose default
    folders (HOME_DIRS) cannot be written, at a folder of this project's in the system temp dir;
    called before matplotlib or W&B is first imported (matplotlib reads its folder once, at import).

    Why: a read-only home (a cluster), HOME=/nonexistent (a container) or an unwritable XDG_CACHE_HOME
    lose nothing a run keeps (its plot, metrics.jsonl, the W&B offline run are in the run folder), but
    matplotlib warned on every import ("Matplotlib created a temporary cache directory ...", and built
    its font cache again each time), and W&B's service, unable to open its debug log, printed its whole
    log to stderr. A variable the user set is kept, and so are the defaults where they can be written.
    (Under MPLCONFIGDIR a matplotlibrc in the default config folder is not read: our plots set what
    they draw.)"""
    for var in variables:
        if os.environ.get(var) or all(_writable(folder) for folder in _defaults(var)):
            continue
        ours = _temp_folder(HOME_DIRS[var][0][2])
        if ours is not None:  # else the library's own fallback (and its warning)
            os.environ[var] = str(ours)


def _defaults(var: str) -> list[Path | None]:
    """The folders `var` stands for where it is unset (None: the home folder is unknown)."""
    folders = []
    for xdg, under_home, name in HOME_DIRS[var]:
        try:
            base = Path(os.environ.get(xdg) or Path.home() / under_home)
        except RuntimeError:  # no HOME and no passwd entry
            base = None
        folders.append(base / name if base is not None and base.is_absolute() else None)
    return folders


def _writable(folder: Path | None) -> bool:
    """Whether `folder` is, or could be made, a writable folder (its nearest existing one is)."""
    if folder is None:
        return False
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder.is_dir() and os.access(folder, os.W_OK)


def _temp_folder(name: str) -> Path | None:
    """<temp dir>/llama4-tinystories-<uid>/<name>, kept across runs (matplotlib's font cache);
    None where it cannot be made or is not ours (another user made it first)."""
    uid = os.getuid() if hasattr(os, "getuid") else None  # (None on Windows: the temp dir is the user's)
    try:
        folder = Path(tempfile.gettempdir(), "llama4-tinystories" + (f"-{uid}" if uid is not None else ""))
        folder.mkdir(mode=0o700, exist_ok=True)
        (folder / name).mkdir(exist_ok=True)
        ours = uid is None or folder.stat().st_uid == uid
    except OSError:  # no writable temp dir
        return None
    return folder / name if ours and _writable(folder / name) else None


# ---------------------------------------------------------------------------------------------
# metrics.jsonl and W&B


def wandb_logged_in() -> bool:
    """Whether W&B holds credentials for its server (WANDB_BASE_URL, else api.wandb.ai) where W&B
    looks for them: WANDB_API_KEY or WANDB_IDENTITY_TOKEN_FILE, or the server's entry in the netrc
    file (NETRC, else ~/.netrc or ~/_netrc), which `wandb login` (--host for a server of one's own)
    writes. A server's base_url saved in W&B's settings file alone is not read: WANDB_BASE_URL or
    --wandb_mode online for it."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").netloc
    try:
        homes = [Path(name).expanduser() for name in ("~/.netrc", "~/_netrc")]
        path = Path(os.environ["NETRC"]).expanduser() if os.environ.get("NETRC") else \
            next((p for p in homes if p.exists()), homes[0])
        return bool(host) and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError, RuntimeError):  # (none, unreadable; RuntimeError: no home)
        return False


def utf8(text: str) -> bool:
    """Whether `text` is UTF-8 text (a name in other bytes holds lone surrogates: os.fsdecode)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def not_utf8(path: Path) -> str:
    """Which part of `path` is not UTF-8: the run folder's name, or a folder above it."""
    if not utf8(path.name):
        return f"the run folder's name {path.name!r}"
    bad = next(i for i, part in enumerate(path.parts) if not utf8(part))
    return f"the name of {str(Path(*path.parts[:bad + 1]))!r}, a folder above the run folder,"


WANDB_TIMEOUT = 60  # seconds an online W&B start may take before the run logs offline


def start_wandb(train_args, run_dir: Path, settings: dict, log=print):
    """The W&B run for this run folder (resumed when `settings` has its id), or None if disabled."""
    mode, why_offline = train_args.wandb_mode, ""
    if mode == "auto":  # W&B's own WANDB_MODE where it is set, else online when logged in
        env = {"online": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
        mode = env.get(os.environ.get("WANDB_MODE", "")) or ("online" if wandb_logged_in() else "offline")
        why_offline = "" if os.environ.get("WANDB_MODE") else " (not logged in: `wandb login` for online)"
    if mode == "disabled":
        return None
    without = "this run logs to metrics.jsonl only; --wandb_mode disabled silences this"
    if not utf8(str(run_dir)):  # a folder made outside train.py: W&B's logs fail on it, with tracebacks
        log(f"wandb: {not_utf8(run_dir)} is not UTF-8, which W&B cannot take; {without}")
        return None
    writable_home_dirs("WANDB_CACHE_DIR")
    try:
        import wandb
    except Exception as e:  # not installed, or a broken install: a run never depends on its dashboard
        log(f"wandb: cannot import it ({first_line(e)}); {without}, pip install wandb brings it back")
        return None
    run = dict(project=train_args.wandb_project, group=train_args.wandb_group or None,
               name=train_args.wandb_name or run_dir.name, id=settings.get("wandb_id"), resume="allow",
               dir=str(run_dir), config=settings,
               settings=wandb.Settings(init_timeout=WANDB_TIMEOUT, silent=True))
    run.update(_same_entity(wandb, run["id"], settings.get("wandb_entity"), log))
    # no network, no login: offline, to sync later; offline failing too (its folder unwritable, a
    # broken install): the run goes on without it. Never crash a run over its dashboard. Offline, a W&B
    # run is not resumed: `wandb sync` of a second offline folder of one id replaces the history the
    # first gave it (wandb/wandb#3841, #5865), so a resume offline is a new W&B run, which train.py
    # gives the whole history (backfill), and Metrics.resumable_id saves no offline run's id.
    for attempt in dict.fromkeys([mode, "offline"]):
        if attempt == "online":  # (without a network it waits out init_timeout, in silence: say so)
            log(f"wandb: connecting (up to {WANDB_TIMEOUT} s without a network; offline after that, and "
                "--wandb_mode offline skips the wait)")
        try:  # W&B silent before init: init's silent=True comes after its login, whose prompt in a
            # terminal ("(1) Create a W&B account ...") waited for ever; the settings of the process's
            # first setup decide it. Silent, a missing login is W&B's UsageError, as without a terminal
            wandb.setup(wandb.Settings(silent=True))
            started = wandb.init(mode=attempt, **(run if attempt != "offline" else {**run, "id": None}))
        except Exception as e:
            log(f"wandb: {attempt} start failed ({_why(e)}); "
                + ("logging offline instead" if attempt != "offline" else without))
            why_offline = ""  # (said)
            continue
        _say_where(started, why_offline, log)
        return started
    return None


def new_wandb_run(run, run_id: str | None, log=print) -> bool:
    """Whether `run` (start_wandb's) is a new W&B run, to be given the history kept from the start
    (Metrics' backfill): another than the checkpoint's `run_id`, or one of that id that W&B's server
    did not hold (run.resumed False: another server than the checkpoint's run was on, WANDB_BASE_URL,
    or a run moved to another project), which W&B's resume="allow" starts empty; `log` says so."""
    if run is None:
        return False
    if run.id != run_id:
        return True
    if getattr(run, "resumed", True) is not False:  # (a W&B that does not say: the checkpoint's run)
        return False
    log(f"wandb: W&B run {run_id} was not found where it was resumed (another server, WANDB_BASE_URL, or it "
        "was moved to another project), so W&B started it anew: it gets the history from the start")
    return True


def say_superseded(run, run_dir: Path, log=print) -> None:
    """For a new W&B run that gets every record from the start (new_wandb_run): name the older
    offline folders in the run folder, which hold earlier sessions' records (of this run, or of one
    killed before its first save that a new run replaces), so that a `wandb sync` of them all (a glob)
    does not put a second, shorter copy of the curves beside this run's. An online run needs no upload.
    A folder that cannot be read (an I/O error, a symlink loop) is left unsaid: never a crash."""
    own = getattr(getattr(run, "settings", None), "sync_dir", None)
    try:
        own = Path(own).resolve() if own else None
        older = [p for p in sorted((run_dir / "wandb").glob("offline-run-*")) if p.resolve() != own]
    except (OSError, RuntimeError):  # (RuntimeError: resolve's symlink loop, before Python 3.13)
        return
    if older:
        n = len(older)
        upload = "upload only this one" if getattr(run, "offline", False) else "they need no upload"
        log(f"wandb: this W&B run gets every record from the start; the {n} older offline "
            f"folder{'s' * (n != 1)} in {run_dir / 'wandb'} (offline-run-*) hold{'s' * (n == 1)} earlier "
            f"sessions' records: {upload} (or delete them)")


def _same_entity(wandb, run_id: str | None, saved: str | None, log) -> dict:
    """What init is given beyond `run` to go on with W&B run `run_id` of entity `saved` (the
    checkpoint's): that entity, where none is set now (else the login's default entity, which may be
    another), or a new W&B run (id None, which train.py gives the whole history) where another is set
    now (WANDB_ENTITY, or W&B's settings file): W&B run ids are per entity, and the id there would be an
    empty run. Nothing where either is unknown (a checkpoint of an earlier version saved no entity)."""
    if run_id is None or not saved:
        return {}
    try:  # (W&B's own reading of WANDB_ENTITY and its settings files, which asks no server)
        now = wandb.setup(wandb.Settings(silent=True)).settings.entity
    except Exception:  # (a W&B that cannot start: the attempts below say why)
        now = None
    if now and now != saved:
        log(f"wandb: W&B run {run_id} is in entity {saved}, not {now} (WANDB_ENTITY or W&B's settings); "
            f"a new W&B run in {now} gets the history from the start (the old one is left as it was)")
        return {"id": None}
    return {"entity": saved}


def _say_where(run, why_offline: str, log) -> None:
    """The one line W&B's own banner gave (it is started silent): the run's page online, or the
    command that uploads an offline run (its folder, relative where it is under the current one)."""
    if getattr(run, "offline", False):
        folder = getattr(getattr(run, "settings", None), "sync_dir", None)
        if folder:
            try:
                inside = Path(folder).resolve().is_relative_to(Path.cwd())
            except OSError:  # the current folder deleted
                inside = False
            shown = os.path.relpath(folder) if inside else folder
            log(f"wandb: logging offline{why_offline}; upload it later with: wandb sync {shlex.quote(shown)}")
    elif getattr(run, "url", None):
        log(f"wandb: {run.url}")


def _why(e: Exception) -> str:
    """first_line(e), naming the setting when W&B refuses its settings (WANDB_CONSOLE=bogus in the
    environment: a pydantic error whose first line is only "1 validation error for Settings")."""
    try:
        err = e.errors()[0]
        setting = ".".join(map(str, err["loc"]))
        return f"{type(e).__name__}: setting {setting}: {err['msg']} (got {err['input']!r})"
    except Exception:  # not a validation error
        return first_line(e)


def resumed_records(path: Path, warn=None) -> list[dict]:
    """The records of the metrics.jsonl a run resumed in its folder goes on with; a RunError for a bad
    line before the last (not ours to guess at) or a record train.py never writes. (runplan checks it
    before any data work too: the refusal came after the data and the model.)"""
    try:
        numbered = storage.numbered_jsonl(path, warn=warn)
    except ValueError as e:
        raise RunError(str(e)) from None
    except OSError as e:  # (a folder of that name, a file we may not read)
        raise RunError(f"cannot read {path} ({e.strerror or e}); make it the run's log again, or move it "
                       "away to start the log afresh") from None
    foreign = [(n, r) for n, r in numbered if not isinstance(r.get("step"), int) or "kind" not in r]
    if foreign:  # (a line added by hand, or by another program)
        line, record = foreign[0]
        raise RunError(f"{path}: line {line} is a record without a step and kind "
                       f"({json.dumps(record)[:80]}), which train.py never writes; remove that line")
    return [r for _, r in numbered]


def _dropped(records: list[dict], k: int, again: set[str]) -> str:
    """Which records a resume at step k drops: those after k, and at k those of the kinds in `again`
    (its open window's partial train record, the val record of an evaluation put off)."""
    at = sorted({r["kind"] for r in records if r["step"] == k and r["kind"] in again})
    after = any(r["step"] > k for r in records)
    if not at:
        return f"those after step {k}"
    what = f"the {' and '.join(at)} record{'s' * (len(at) > 1)} at step {k}"
    return what + (" and those after it" if after else "")


class Metrics:
    """metrics.jsonl in the run folder (rank 0), mirrored to W&B.

    A new run starts the file afresh. A resumed run keeps the records up to the checkpoint's step
    (the lines a crashed run wrote after its last save are replaced by the resumed run's, and the
    log says how many). With `open_window` (the checkpoint was saved in the middle of a log
    window, which the resumed run goes on with), the train record at the checkpoint's step is
    dropped too: it was that window's partial record, and the resumed run writes the whole one,
    so that the file holds what an uninterrupted run's holds. With `eval_due` (a signal put off the
    evaluation at the checkpoint's step, which the resumed run runs first), the val record at that
    step is dropped: a resumed run killed before its next save may have written it already.

    W&B gets each record as one row whose `step` value is the chart's x axis (W&B's own step, one
    per row, only grows: a resumed W&B run would drop a row logged at a step it has passed, such as
    the evaluation a signal put off). With `backfill` (a resumed run's new W&B run: the run trained
    without W&B until now, or its checkpoint holds no W&B run id), the records kept are logged to it
    first, so that it holds the whole history. A W&B call that fails (W&B's service died, its folder's disk
    is full) is one line, and the run goes on logging to metrics.jsonl only; its checkpoints then hold
    no W&B run id (wandb_id), so that the resumed run starts a new W&B run with the whole history. A
    finish that fails comes after the last save, whose checkpoint holds the id: the run folder's
    wandb_unfinished.txt names that W&B run instead (unfinished_wandb: listed before the finish, taken
    off once it succeeds), which a resume does not go on with."""

    def __init__(self, run_dir: Path, wandb_run, keep_until_step: int | None, log=print,
                 open_window: bool = False, backfill: bool = False, eval_due: bool = False,
                 moe_every: int = 1):
        self.path, self.wandb, self.log = run_dir / "metrics.jsonl", wandb_run, log
        self.moe_every = moe_every  # (the W&B panels name the model's layers: _wandb_row)
        self._to_wandb(_against_step)
        if keep_until_step is not None and self.path.exists():  # drop lines a crashed run wrote
            records = resumed_records(self.path, warn=log)
            k = keep_until_step
            again = {kind for kind, redone in (("train", open_window), ("val", eval_due)) if redone}
            kept = [r for r in records if r["step"] < k or (r["step"] == k and r["kind"] not in again)]
            if len(kept) < len(records):
                which = _dropped(records, k, again)
                log(f"{self.path}: dropped {len(records) - len(kept)} of its records, {which}, which the run "
                    f"resumed from its checkpoint there writes again; kept {len(kept)}")
            storage.atomic_write(self.path, "".join(_line(r) for r in kept).encode(), storage.OUT_FIX)
            for r in kept if backfill else []:
                self._to_wandb(lambda run, r=r: run.log(_wandb_row(r, moe_every)))
        elif keep_until_step is None and self.path.exists():  # (a run killed before its first save)
            n = sum(1 for line in self.path.read_bytes().splitlines() if line.strip())
            log(f"{self.path}: replacing its {n} record{'s' * (n != 1)}, of a run here that saved no "
                "checkpoint")
            self.path.unlink()

    def write(self, record: dict):
        storage.append_jsonl(self.path, record, storage.OUT_FIX)
        self._to_wandb(lambda run: run.log(_wandb_row(record, self.moe_every)))

    def log_image(self, name: str, path, step: int):
        if path:
            self._to_wandb(lambda run: run.log({STEP: step, name: _wandb().Image(str(path))}))

    @property
    def wandb_id(self) -> str | None:
        """The id of the W&B run that got every record of this session, for the checkpoint; None
        without one (W&B off, failed to start or failed since), so that the resume starts a new W&B
        run, which gets the whole history, rather than going on with one that lacks records."""
        return None if self.wandb is None else self.wandb.id

    @property
    def resumable_id(self) -> str | None:
        """wandb_id, for the checkpoint, where a resume may go on with that W&B run: not an offline
        one, which W&B cannot resume (start_wandb); its resume starts a new W&B run instead, which
        gets the whole history."""
        return None if getattr(self.wandb, "offline", False) else self.wandb_id

    @property
    def resumable_entity(self) -> str | None:
        """The entity of the resumable_id's W&B run, for the checkpoint (W&B's server names it, the
        login's default where none was set), so that a resume under another entity starts a new W&B
        run (start_wandb); None without a resumable id, or where W&B does not say."""
        try:
            entity = self.wandb.entity if self.resumable_id is not None else None
        except Exception:  # (a dead run)
            return None
        return entity if isinstance(entity, str) and entity else None

    def finish(self, exit_code: int = 0):
        """End the W&B run: finished, or failed (exit_code 1: the run stopped on an error). Its id is
        in the run folder's wandb_unfinished.txt until the finish succeeds, so that one which fails
        or is cut short (Ctrl-C or a kill during W&B's last upload) is not gone on with (see the class)."""
        run_id = self.wandb_id
        if run_id is None:
            return
        listed = self._unfinished(run_id, listed=True)
        self._to_wandb(lambda run: run.finish(exit_code=exit_code),
                       "finishing the W&B run failed ({}); it may lack the last records, which metrics.jsonl "
                       "holds: a resume starts a new W&B run with all of them")
        if self.wandb is not None and listed:  # finished: off the list
            self._unfinished(run_id, listed=False)

    def _unfinished(self, run_id: str, listed: bool) -> bool:
        """Put run_id on wandb_unfinished.txt, or take it off; False where the file cannot be written."""
        ids = unfinished_wandb(self.path.parent)
        ids = ids | {run_id} if listed else ids - {run_id}
        path = self.path.with_name(UNFINISHED)
        try:
            if ids:
                storage.atomic_write(path, "".join(f"{i}\n" for i in sorted(ids)).encode(), storage.OUT_FIX)
            else:
                path.unlink(missing_ok=True)
            return True
        except (StorageError, OSError) as e:  # a full disk
            if listed:
                self.log(f"wandb: should finishing the W&B run fail, a resume would go on with it ({e})")
            return False

    def _to_wandb(self, call, failed="logging failed ({}); this run logs to metrics.jsonl only from here on"):
        """call(the W&B run), if there is one; a failure ends W&B logging with one line, `failed` with
        the error in it (a run never stops over its dashboard)."""
        if self.wandb is None:
            return
        try:
            call(self.wandb)
        except Exception as e:  # its service killed, a full disk under its folder, ...
            self.wandb = None
            self.log("wandb: " + failed.format(first_line(e)))
            try:  # else W&B's own exit hook prints the same failure again, as a traceback
                _wandb().teardown()
            except Exception:
                pass


def unfinished_wandb(run_dir: Path) -> set[str]:
    """The ids of the W&B runs of this run folder whose finish failed (Metrics.finish): they may lack
    records, so a resume starts a new W&B run rather than going on with one of them."""
    try:
        return set((Path(run_dir) / UNFINISHED).read_text(errors="replace").split())
    except OSError:  # none failed to finish (an unreadable file: as if none had)
        return set()


def _wandb_row(record: dict, moe_every: int = 1) -> dict:
    """A metrics record as W&B keys: train/loss, ..., val/bits_per_byte, ..., and each expert's share
    and each MoE layer's router entropy in their own panels, named by the model's layer index, as
    scripts/compare.py labels them (a record lists the MoE layers alone: with --moe_every 2 its
    first is layer 1; with moe_every 1 the names are those W&B histories have always had)."""
    prefix = record["kind"]
    row = {STEP: record["step"], **{f"{prefix}/{k}": v for k, v in record.items()
                                    if isinstance(v, (int, float)) and k not in ("step", "kind")}}
    if "tokens" in record:  # (also as train/tokens and val/tokens: the keys W&B histories have had)
        row[TOKENS] = record["tokens"]
    for i, shares in enumerate(record.get("expert_share") or []):  # (MoE layers moe_every - 1, ...)
        row.update({f"experts/layer{(i + 1) * moe_every - 1}/expert{e}": s for e, s in enumerate(shares)})
    entropy = record.get("router_entropy") or []
    row.update({f"router_entropy/layer{(i + 1) * moe_every - 1}": h for i, h in enumerate(entropy)})
    return row


def _against_step(run):
    """Every chart of the W&B run against the records' `step` value (see Metrics); `tokens`, in every
    train and val row, is the x axis a chart can be switched to (runs of other batch sizes compared)."""
    run.define_metric(STEP)
    for name in ("train/*", "val/*", "experts/*", "router_entropy/*", "loss_plot", TOKENS):
        run.define_metric(name, step_metric=STEP)


def _wandb():
    import wandb
    return wandb


def _line(record: dict) -> str:
    return json.dumps(record) + "\n"


# ---------------------------------------------------------------------------------------------
# Reading runs back


def read_metrics(run_dir, warn=None, need=None, fix=None) -> tuple[list, list]:
    """(train records, val records) of a run folder; none yet where train.py has not logged its first
    record (its run.lock comes before the data work, its settings before the first step: "is it a run
    folder?" there was an error, and the other runs went unplotted). `need` maps a kind ("train",
    "val") to the fields each of its records must hold (plot_runs: its x axis and its curves). A
    record without a kind, or without one of those, is a ValueError naming the file and its line (a
    KeyError named the field alone: which of several runs held it?). `fix` is the advice of every such
    error, a missing or unreadable log's too (sweep.py's: its run is trained again); by default a
    reader's of run folders it was given (plot_runs)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        records = numbered_metrics(path, warn, fix)
    except OSError as e:
        if e.errno is None:  # (one of numbered_metrics' own, its advice given)
            raise
        # (a log or run folder we may not read: "[Errno 13] Permission denied: ...", and no advice)
        raise type(e)(f"cannot read {path} ({e.strerror or e}); "
                      + (fix or "make it readable")) from None
    for line, r in records:
        kind = r.get("kind") if r.get("kind") in ("train", "val") else None
        if missing := next((f for f in ("kind", *(need or {}).get(kind, ())) if f not in r), None):
            every = f"every {kind} record" if kind else "every record"
            raise ValueError(f"{path}: line {line} has no {missing!r} field, which train.py writes in "
                             f"{every}; " + (fix or "pass run folders that this project's train.py wrote, or "
                                             "delete that line"))
    return [r for _, r in records if r["kind"] == "train"], [r for _, r in records if r["kind"] == "val"]


def numbered_metrics(path: Path, warn, fix) -> list[tuple[int, dict]]:
    """read_metrics' numbered records of `path`: none yet where train.py started (no log yet), and an
    OSError of its own (no errno) for a missing log or a folder in its place."""
    run_dir = path.parent
    if not path.exists():
        if storage.run_folder_files(run_dir):
            return []  # (train.py started there)
        raise FileNotFoundError(f"{path} does not exist; {fix or f'is {run_dir} a run folder?'}")
    if path.is_dir():  # ("[Errno 21] Is a directory")
        raise IsADirectoryError(f"{path} is a folder, not the run's log; " + (fix or "put the run's "
                                f"metrics.jsonl file in its place, or leave {run_dir} out"))
    return storage.numbered_jsonl(path, warn=warn, fix=fix)


def shown(run_dir) -> str:
    """The run folder's name as text a plot can draw: bytes that are not UTF-8 (a folder made
    outside train.py, `mkdir $'caf\\xe9'`) become U+FFFD, where matplotlib's fonts fail on them."""
    return os.fsencode(Path(run_dir).resolve().name).decode("utf-8", "replace")  # (".": the folder's name)


def run_label(run_dir) -> str:
    """Run name and the settings that tell runs apart (from model.json and train.json); a run started
    from another's weights (--init_from) says which: "ft (from base/last.pt): ..." (its curve counts
    its own steps and tokens, from 0, as train.py logs them)."""
    run_dir = Path(run_dir)
    try:  # (a field the run's version did not have yet takes today's default)
        m = {**config.to_dict(config.ModelArgs()), **json.loads((run_dir / "model.json").read_bytes())}
        t = {**config.to_dict(config.TrainArgs()), **json.loads((run_dir / "train.json").read_bytes())}
        dense = config.from_dict(config.ModelArgs, m).is_dense
        start = f" (from {init_shown(t['init_from'])})" if t["init_from"] else ""
    except (OSError, ValueError, TypeError):  # (ConfigError is a ValueError; TypeError: not a table)
        return shown(run_dir)
    noise = "" if m["router_noise"] else " no-noise"
    moe = "dense" if dense else f"{m['n_experts']}e top-{m['top_k']}{noise}"
    return (f"{shown(run_dir)}{start}: d{m['dim']} L{m['n_layers']} {moe}, vocab {m['vocab_size']}, "
            f"aux {m['router_aux_loss_coef']:g}, lr {t['lr']:g}, "
            f"batch {t['batch_size'] * t['grad_accum']}x{m['max_seq_len']}")


def init_shown(init_from: str) -> str:
    """The checkpoint a run started from (train.json's init_from, absolute), short: its folder's name
    and its own (base/last.pt), as text a plot can draw (not UTF-8: U+FFFD, as shown)."""
    path = Path(init_from)
    name = f"{path.parent.name}/{path.name}" if path.parent.name else path.name
    # (a hand-edited lone surrogate: a UnicodeError, which run_label answers with the run's name alone)
    return os.fsencode(name).decode("utf-8", "replace")


# ---------------------------------------------------------------------------------------------
# Plots


def incomparable(runs) -> list[str]:
    """What makes the curves of (run folder, train records, val records) mislead when overlaid:
    other tokenizers (nats/token and tokens seen mean other things) or validation on other text
    (val_bytes of the last evaluation differ: another --val_data, or --eval_windows windows of
    other tokens)."""
    problems, tokenizers = [], []
    for run_dir, _, _ in runs:
        try:  # by identity: a copy transformers saved again is the same tokenizer
            fields = json.loads((Path(run_dir) / "tokenizer.json").read_text(encoding="utf-8"))
            tokenizers.append((shown(run_dir), tokenizer.identity(fields)))
        except (OSError, ValueError, TypeError):
            pass
    groups = {}  # tokenizer -> its runs: which share one (all runs listed hid the odd one out)
    for name, t in tokenizers:
        groups.setdefault(t, []).append(name)
    if len(groups) > 1:
        which = "; ".join(f"{'another' if i else 'one'} in {', '.join(names)}"
                          for i, names in enumerate(groups.values()))
        problems.append(f"the runs use {len(groups)} different tokenizers ({which}): their training loss in "
                        "nats/token and their tokens seen do not compare; compare validation bits/byte")
    covered = [(shown(run_dir), val[-1].get("val_bytes")) for run_dir, _, val in runs if val]
    if len({n for _, n in covered}) > 1:
        sizes = ", ".join(f"{name} {n}" for name, n in covered)
        problems.append(f"the runs were validated on different text (val_bytes: {sizes}): their bits/byte do "
                        "not compare; train them with the same --val_data and --eval_windows 0 (all of it)")
    return problems


def plot_runs(run_dirs, out, x="tokens", title=None, warn=None) -> Path:
    """Left: training LM loss; right: validation bits per byte; against `x` (tokens, step, minutes).
    One run also gets its validation nats/token beside the training curve."""
    writable_home_dirs("MPLCONFIGDIR")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    one = len(run_dirs) == 1  # (a single run draws its validation nats/token too)
    drawn = {"train": (x, "lm_loss"), "val": (x, "bits_per_byte") + ("nats_per_token",) * one}
    runs = [(run_dir, *read_metrics(run_dir, warn, need=drawn)) for run_dir in run_dirs]
    empty = [f"{shown(run_dir)} has no records yet: it is not in the plot"
             for run_dir, train, val in runs if not train and not val]
    for problem in incomparable(runs) + empty:
        if warn is not None:
            warn(problem)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    try:  # closed however it ends: a run whose plot fails at each evaluation kept every figure
        return _draw(fig, left, right, runs, run_dirs, out, x, title)
    finally:
        plt.close(fig)


def literal(text: str) -> str:
    """`text` (a run's name, a folder) as matplotlib draws it as written: two $ in it are math to
    matplotlib, and one it cannot parse failed the figure ('a$\\b$': every evaluation's plot)."""
    return text.replace("$", r"\$")


def _draw(fig, left, right, runs, run_dirs, out, x, title) -> Path:
    """plot_runs' curves on its figure, written at out."""
    names = [shown(run_dir) for run_dir, _, _ in runs]
    for i, (run_dir, train, val) in enumerate(runs):
        # matplotlib's 10 colours, then again dashed, dotted, ...: the 11th run was the 1st's twin
        color, style = f"C{i % 10}", ["-", "--", ":", "-."][i // 10 % 4]
        label = run_label(run_dir)
        if names.count(names[i]) > 1:  # (runs of one name in two folders: told apart by the folder)
            label = f"{shown(Path(run_dir).resolve().parent)}/{label}"
        label = literal(label)
        if train:
            left.plot([r[x] for r in train], [r["lm_loss"] for r in train], color=color, alpha=0.8,
                      label=label, marker="o" if len(train) == 1 else None, linestyle=style)
        if val:
            right.plot([r[x] for r in val], [r["bits_per_byte"] for r in val], marker="o", linestyle=style,
                       color=color, label=label)
            if len(run_dirs) == 1:  # a single run: its validation nats/token next to the train curve
                left.plot([r[x] for r in val], [r["nats_per_token"] for r in val], "o-",
                          color="C1", label="validation")
    left.set(xlabel=X_LABELS[x], ylabel="LM loss (nats/token)", title="training loss")
    right.set(xlabel=X_LABELS[x], ylabel="bits per byte", title="validation bits per byte")
    if not left.lines and not right.lines:
        where = ", ".join(map(str, run_dirs))
        raise ValueError(f"no train or validation records in {where}: nothing to plot")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kind = out.suffix.lstrip(".").lower()  # the format the name asks for (png, svg, pdf, ...), else png
    kind = kind if kind in fig.canvas.get_supported_filetypes() else "png"
    with warnings.catch_warnings():  # a run named with an emoji or CJK: the font's box, not two log lines
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
        fig.tight_layout()
        storage.atomic_write(out, lambda f: fig.savefig(f, format=kind, dpi=110))
    return out


def plot_loss(run_dir: Path, out, log=print) -> Path | None:
    """This run's curves at `out` (relative paths are inside the run folder); a plot that cannot be
    made (its records unreadable, its file unwritable, matplotlib failing) is one line, and training
    goes on."""
    out = Path(run_dir) / out
    try:
        return plot_runs([run_dir], out, title=f"{literal(shown(run_dir))}: loss")
    except StorageError as e:  # (its line names the plot and the fix)
        log(f"plot: {e}; training goes on")
    except OSError as e:  # (its text names the file: metrics.jsonl, or the plot's folder)
        log(f"plot: could not make {out} ({e}); training goes on")
    except Exception as e:  # matplotlib's own failures: a plot is never worth a run
        log(f"plot: could not draw {out} ({first_line(e)}); training goes on")
    return None
