#!/usr/bin/env bash
# Run the README's recipes as they are written, on this machine, in a fresh clone of this repository:
#   1. the quick start's command (1): the set-up, then `relayrl train` with its defaults;
#   2. the two-machine recipe of "Workers on other machines": `relayrl keys`, the trainer and worker
#      w0 (in a folder of its own, holding only the key files the recipe says to copy), on loopback:
#      host names (trainer.example) and 0.0.0.0 binds become 127.0.0.1.
# The commands are read from README.md's code blocks, so the check follows the README. The trainer and
# the worker run in the background; the script waits (bounded) for the trainer to finish its epochs
# and for the worker to stop by itself when the trainer announces the end of the run, stops anything
# left by its process id, and exits non-zero with a message naming the step that failed.
#
# Usage: bash scripts/check_readme_recipes.sh [--keep] [--dry-run]
#   --keep: leave the clone and the logs; --dry-run: only print the commands it would run
# Needs git, bash and Python >= 3.10 (python3, or $PYTHON, as scripts/setup.sh uses). Settings:
#   RECIPE_TIMEOUT=2400   seconds allowed for each training (the quick start's includes the set-up)
#   RECIPE_WORKER_GRACE=120   seconds the worker may take to stop after the trainer has finished
# The clone has the repository's committed state (HEAD): uncommitted edits are not checked.
set -euo pipefail
set -m  # each background command in a process group of its own: stopped with its children

KEEP=0
DRY=0
for arg in "$@"; do
  case "$arg" in
    --keep) KEEP=1 ;;
    --dry-run) DRY=1 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "check_readme_recipes: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
TIMEOUT="${RECIPE_TIMEOUT:-2400}"
GRACE="${RECIPE_WORKER_GRACE:-120}"
PYTHON="${PYTHON:-python3}"
START=$SECONDS

say() { printf '[%4ds] %s\n' "$((SECONDS - START))" "$*"; }
fail() {
  say "FAILED: $*" >&2
  exit 1
}

for tool in git "$PYTHON"; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (needed to clone and set up relayrl)"
done

REPO="$(cd "$(dirname "$0")/.." && git rev-parse --show-toplevel)" || fail "$(dirname "$0")/.. is not a git repository"
COMMIT="$(git -C "$REPO" rev-parse --short HEAD)"
if ! git -C "$REPO" diff --quiet HEAD -- README.md 2>/dev/null; then
  say "note: README.md has uncommitted edits; the clone checks the committed one ($COMMIT)"
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/relayrl-recipes.XXXXXX")"
CLONE="$WORK/relayrl"
LOGS="$WORK/logs"
mkdir -p "$LOGS"

PIDS=()   # every background command started, stopped at exit if still running
OK=0
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      say "stopping process group $pid, still running"
      kill -TERM -- "-$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  done
  if [ "$OK" = 1 ] && [ "$KEEP" = 0 ]; then
    rm -rf "$WORK"
  else
    say "the clone and the logs are kept in $WORK (logs: $LOGS)"
  fi
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

# --- a fresh clone, and the commands from its README ---------------------------------------------
say "cloning $REPO ($COMMIT) into $CLONE"
git clone --quiet "$REPO" "$CLONE" || fail "git clone of $REPO failed"
cd "$CLONE"

RECIPES="$LOGS/recipes.tsv"
"$PYTHON" - README.md >"$RECIPES" <<'EOF' || fail "could not read the recipes from README.md (above)"
"""Print the recipes' commands as NAME<TAB>TEXT lines: QUICKSTART, then for the two-machine recipe
each command (KEYS, TRAINER, WORKER) as README and RUN (the loopback version), and COPY (the files
the recipe says to copy to the worker machine)."""
import re
import sys

text = open(sys.argv[1], encoding="utf-8").read()


def fail(message):
    sys.exit(f"README.md: {message}")


def section(title):
    found = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    if not found:
        fail(f"no '## {title}' section")
    return found.group(1)


def bash_blocks(body):
    return re.findall(r"^```bash[ \t]*\n(.*?)^```", body, re.M | re.S)


def is_command(line):
    return line.strip() != "" and not line.lstrip().startswith("#")


# 1. the quick start: the command after the comment "# 1."
blocks = bash_blocks(section("Quick start"))
if not blocks:
    fail("the Quick start section has no bash block")
lines = blocks[0].splitlines()
marks = [i for i, line in enumerate(lines) if re.match(r"\s*#\s*1\.", line)]
after = [line for line in lines[marks[0] + 1:] if is_command(line)] if marks else []
if not after:
    fail("the Quick start's bash block has no command after its '# 1.' comment")
print(f"QUICKSTART\t{after[0].strip()}")

# 2. the two-machine recipe: the bash block with a trainer and a worker and no relay
recipe = [b for b in bash_blocks(section("Workers on other machines"))
          if re.search(r"\brelayrl\s+trainer\b", b) and re.search(r"\brelayrl\s+worker\b", b)
          and "relay" not in re.sub(r"\brelayrl\b", "", b)]
if not recipe:
    fail("the 'Workers on other machines' section has no bash block with 'relayrl trainer' and "
         "'relayrl worker' (and no relay)")
block = recipe[0]
hosts = set(re.findall(r"reachable at ([A-Za-z0-9][A-Za-z0-9.-]*[A-Za-z0-9])", block))
hosts |= {h for h in re.findall(r"--connect(?:-relay)?[ =]([^\s:]+)", block) if re.search(r"[A-Za-z]", h)}
hosts -= {"localhost"}


def loopback(command):
    for host in sorted(hosts, key=len, reverse=True):
        command = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", "127.0.0.1", command)
    return command.replace("0.0.0.0", "127.0.0.1")


names = {"KEYS": r"\brelayrl\s+keys\b", "TRAINER": r"\brelayrl\s+trainer\b", "WORKER": r"\brelayrl\s+worker\b"}
seen = set()
for line in block.splitlines():
    if not is_command(line):
        if re.search(r"\bcopy\b", line):
            files = re.findall(r"\bkeys/[\w./-]*\w", line)
            if files:
                print("COPY\t" + " ".join(files))
        continue
    name = next((n for n, pattern in names.items() if re.search(pattern, line)), None)
    if name is None or name in seen:
        fail(f"the two-machine recipe has a command this check does not know where to run: {line.strip()!r} "
             "(update scripts/check_readme_recipes.sh)")
    seen.add(name)
    print(f"{name}.README\t{line.strip()}")
    print(f"{name}.RUN\t{loopback(line.strip())}")
missing = sorted(set(names) - seen)
if missing:
    fail(f"the two-machine recipe has no {' and no '.join(missing).lower()} command")
EOF

declare -A CMD=()
while IFS=$'\t' read -r name value; do
  CMD["$name"]="$value"
done <"$RECIPES"
[ -n "${CMD[COPY]:-}" ] || fail "README.md: the two-machine recipe names no key files to copy to the worker machine"
if [ "$DRY" = 1 ]; then
  say "quick start: ${CMD[QUICKSTART]}"
  for name in KEYS TRAINER WORKER; do
    say "${name,,}: ${CMD[$name.README]}"
    say "${name//?/ }  run as: ${CMD[$name.RUN]}"
  done
  say "copied to the worker machine: ${CMD[COPY]}"
  OK=1
  exit 0
fi

# run_bg NAME LOGFILE DIR COMMAND: start COMMAND (a README line, with its comment) in DIR, in the
# background, in a process group of its own whose id is its pid; sets BG_PID
run_bg() {
  local name="$1" log="$2" dir="$3" command="$4"
  (cd "$dir" && exec bash -c "$command") >"$log" 2>&1 </dev/null &
  BG_PID=$!
  PIDS+=("$BG_PID")
  say "$name started (pid $BG_PID, log $log)"
}

last_line() {  # the last line of a log, progress-bar redraws split into lines
  tail -c 4000 "$1" 2>/dev/null | tr '\r' '\n' | sed 's/[[:space:]]*$//' | grep -v '^$' | tail -n 1 | cut -c1-170
}

# wait_for NAME PID SECONDS LOG: wait until PID exits (then RC is its exit code) or SECONDS pass
# (then fail), printing the last line of LOG every 30 s
wait_for() {
  local name="$1" pid="$2" limit="$3" log="$4" begin=$SECONDS next=$((SECONDS + 30))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $((SECONDS - begin)) -ge "$limit" ]; then
      fail "$name did not finish within $limit s (RECIPE_TIMEOUT / RECIPE_WORKER_GRACE); its last line: $(last_line "$log")"
    fi
    if [ "$SECONDS" -ge "$next" ]; then
      say "  $name: $(last_line "$log")"
      next=$((SECONDS + 30))
    fi
    sleep 1
  done
  RC=0
  wait "$pid" || RC=$?
  say "$name exited with code $RC (waited $((SECONDS - begin)) s)"
}

done_line() {  # the 'done:' line that relayrl train and relayrl trainer print at the end of a run
  tr '\r' '\n' <"$1" | grep -a '^done: ' | tail -n 1 || true
}

port_free() {  # port_free PORT: true if 127.0.0.1:PORT can be bound
  "$PYTHON" -c "import socket, sys
s = socket.socket()
try:
    s.bind(('127.0.0.1', int(sys.argv[1])))
except OSError:
    sys.exit(1)" "$1"
}

# --- 1. the quick start --------------------------------------------------------------------------
say "step 1, the quick start, as README.md writes it: ${CMD[QUICKSTART]}"
run_bg "the quick start" "$LOGS/quickstart.log" "$CLONE" "${CMD[QUICKSTART]}"
wait_for "the quick start" "$BG_PID" "$TIMEOUT" "$LOGS/quickstart.log"
[ "$RC" = 0 ] || { tail -n 20 "$LOGS/quickstart.log" | tr '\r' '\n' | tail -n 20 >&2; fail "the quick start command exited with code $RC (log $LOGS/quickstart.log)"; }
DONE="$(done_line "$LOGS/quickstart.log")"
[ -n "$DONE" ] || fail "the quick start ended without relayrl train's 'done:' line (log $LOGS/quickstart.log)"
say "  $DONE"
[ -x .venv/bin/relayrl ] || fail "after the quick start there is no .venv/bin/relayrl in the clone"

# --- 2. the two-machine recipe, on loopback ------------------------------------------------------
say "step 2, the two-machine recipe of 'Workers on other machines', on loopback"
for name in KEYS TRAINER WORKER; do
  say "  README: ${CMD[$name.README]}"
  [ "${CMD[$name.README]}" = "${CMD[$name.RUN]}" ] || say "  run as: ${CMD[$name.RUN]}"
done
for port in $(grep -o 'tcp://127\.0\.0\.1:[0-9]*' <<<"${CMD[TRAINER.RUN]}" | sed 's/.*://'); do
  port_free "$port" || fail "port $port on 127.0.0.1 is in use; the recipe's trainer needs it (stop what listens there)"
done

say "the keys, on the trainer machine"
RC=0
bash -c "${CMD[KEYS.RUN]}" >"$LOGS/keys.log" 2>&1 </dev/null || RC=$?
[ "$RC" = 0 ] || { cat "$LOGS/keys.log" >&2; fail "the keys command exited with code $RC (output above)"; }
sed 's/^/    /' "$LOGS/keys.log"

run_bg "the trainer" "$LOGS/trainer.log" "$CLONE" "${CMD[TRAINER.RUN]}"
TRAINER_PID=$BG_PID
for _ in $(seq 1 300); do
  grep -aq 'trainer: workers connect to' "$LOGS/trainer.log" && break
  kill -0 "$TRAINER_PID" 2>/dev/null || { cat "$LOGS/trainer.log" >&2; fail "the trainer exited before listening (log above)"; }
  sleep 1
done
grep -aq 'trainer: workers connect to' "$LOGS/trainer.log" || fail "the trainer did not say where workers connect within 300 s"
say "  $(grep -a 'trainer: workers connect to' "$LOGS/trainer.log" | head -n 1)"

MACHINE="$WORK/worker-machine-0"   # the worker's machine: the set-up and only the copied key files
mkdir -p "$MACHINE"
ln -s "$CLONE/.venv" "$MACHINE/.venv"
for file in ${CMD[COPY]}; do
  [ -f "$CLONE/$file" ] || fail "the recipe says to copy $file, which the keys command did not create"
  mkdir -p "$MACHINE/$(dirname "$file")"
  cp -p "$CLONE/$file" "$MACHINE/$file"
done
say "worker machine 0: $MACHINE with .venv and the copied ${CMD[COPY]}"
run_bg "worker w0" "$LOGS/worker.log" "$MACHINE" "${CMD[WORKER.RUN]}"
WORKER_PID=$BG_PID

wait_for "the trainer" "$TRAINER_PID" "$TIMEOUT" "$LOGS/trainer.log"
TRAINER_RC=$RC
DONE="$(done_line "$LOGS/trainer.log")"
if [ "$TRAINER_RC" != 0 ] || [ -z "$DONE" ]; then
  tail -c 3000 "$LOGS/trainer.log" | tr '\r' '\n' | tail -n 15 >&2
  fail "the trainer exited with code $TRAINER_RC$([ -n "$DONE" ] || echo ", without its 'done:' line") (log $LOGS/trainer.log)"
fi
say "  $DONE"
wait_for "worker w0" "$WORKER_PID" "$GRACE" "$LOGS/worker.log"
if [ "$RC" != 0 ]; then
  tail -n 15 "$LOGS/worker.log" >&2
  fail "worker w0 exited with code $RC (log $LOGS/worker.log)"
fi
grep -aq 'the trainer announced the end of the run' "$LOGS/worker.log" \
  || fail "worker w0 stopped without saying that the trainer announced the end of the run (log $LOGS/worker.log)"
say "  $(grep -a 'worker w0: stopped' "$LOGS/worker.log" | tail -n 1)"

OK=1
say "all README recipes ran as written (on loopback) in $((SECONDS - START)) s"
