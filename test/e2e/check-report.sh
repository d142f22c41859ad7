#!/usr/bin/env bash
# Checks a run's timeline page (xtask/templates/report.html, filled in by xtask/src/timeline.rs)
# the way a person would see it, in Debian's headless Chromium:
#   (a) takes a screenshot next to the report (REPORT.png, 1400x900) and checks it is a real,
#       non-trivial PNG;
#   (b) dumps the DOM after load and checks body has data-rendered="ok" (set by the page's
#       script when it finished) and that every PHASE given has a data-phase="PHASE" element;
#   (c) fails if the page had any script error, found two independent ways:
#       - Chromium's own log (--enable-logging=stderr --v=0) prints every console message of
#         the page as `INFO:CONSOLE...] "MESSAGE", source: URL (LINE)`; uncaught exceptions,
#         syntax errors and unhandled promise rejections appear there as "Uncaught ...";
#       - a copy of the page with a recorder script put first in <head> collects error
#         events (script errors, resources that failed to load), unhandled rejections and
#         console.error calls (which the log above cannot tell from console.log) into an
#         attribute that the DOM dump shows.
#       --virtual-time-budget lets timers run before a dump, so late errors count too.
#
# usage: test/e2e/check-report.sh REPORT.html PHASE...
# Exits 0 when every check passed; otherwise 1, naming each failed check (2 on bad usage).
# Needs /usr/bin/chromium; as root it installs Debian's `chromium` package when missing.
set -euo pipefail

CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
# How long one Chromium run may take before it counts as hung.
RUN_TIMEOUT=${CHECK_REPORT_TIMEOUT:-120}
# A blank 1400x900 page compresses to a few KB; a rendered report is tens of KB.
MIN_PNG_BYTES=${CHECK_REPORT_MIN_PNG_BYTES:-15000}

say() { printf 'check-report: %s\n' "$*"; }
usage() {
  echo "usage: $0 REPORT.html PHASE..." >&2
  exit 2
}

[[ $# -ge 1 ]] || usage
report=$1
shift
[[ -f $report ]] || {
  say "FAIL: no such report: $report" >&2
  exit 1
}
report=$(realpath -- "$report")
case $report in
*.html | *.htm) png=${report%.*}.png ;;
*) png=$report.png ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/check-report.XXXXXX")
trap 'rm -rf -- "$work"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [[ ! -x $CHROMIUM ]]; then
  if [[ $CHROMIUM == /usr/bin/chromium && $(id -u) -eq 0 ]]; then
    say "installing chromium (Debian package; takes about a minute)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq chromium >"$work/apt.log" 2>&1; then
      apt-get update -qq >>"$work/apt.log" 2>&1 || true
      apt-get install -y -qq chromium >>"$work/apt.log" 2>&1 || {
        tail -n 20 "$work/apt.log" >&2
        say "FAIL: could not install chromium (apt-get install -y chromium)" >&2
        exit 1
      }
    fi
  else
    say "FAIL: $CHROMIUM not found; install it: apt-get install -y chromium (as root)" >&2
    exit 1
  fi
fi

failures=()
fail() {
  failures+=("$*")
  say "FAIL: $*"
}
ok() { say "ok: $*"; }

# Lines of a Chromium log worth showing when a run went wrong (not the D-Bus noise of a
# machine without a session bus).
log_tail() {
  grep -v -e 'dbus' -e 'unexpected operator' -e 'vaapi' -e 'InitializeSandbox' "$1" |
    tail -n 15 >&2 || true
}

# run_chromium NAME ARG...: one headless run with a fresh profile; stdout to $work/NAME.out,
# Chromium's log (with the page's console messages) to $work/NAME.log.
run_chromium() {
  local name=$1
  shift
  local profile
  profile=$(mktemp -d "$work/profile.XXXXXX")
  local rc=0
  timeout -k 10 "$RUN_TIMEOUT" "$CHROMIUM" \
    --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --enable-logging=stderr --v=0 \
    "$@" >"$work/$name.out" 2>"$work/$name.log" || rc=$?
  if [[ $rc -ne 0 ]]; then
    log_tail "$work/$name.log"
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
      fail "chromium ($name) did not finish within ${RUN_TIMEOUT}s"
    else
      fail "chromium ($name) exited with status $rc"
    fi
    return 1
  fi
}

# The value as Chromium serializes it inside a double-quoted attribute. Chromium >= 138
# also escapes < and >; older ones do not: print both forms.
attr_forms() {
  local v=$1
  # Replacements quoted: bash 5.2 expands an unquoted & in them to the match.
  v=${v//&/"&amp;"}
  v=${v//\"/"&quot;"}
  v=${v//$'\u00a0'/"&nbsp;"}
  printf '%s\n' "$v"
  v=${v//</"&lt;"}
  v=${v//>/"&gt;"}
  printf '%s\n' "$v"
}

url="file://$report"
say "report: $report"
say "chromium: $("$CHROMIUM" --version 2>/dev/null | head -n 1 || echo "$CHROMIUM")"

# (a) The screenshot.
rm -f -- "$png"
# (No --virtual-time-budget here: with it, parts of the screenshot below the first
# 757 px of viewport are sometimes left unpainted.)
if run_chromium screenshot --screenshot="$png" --window-size=1400,900 --hide-scrollbars "$url"; then
  if [[ ! -s $png ]]; then
    fail "no screenshot was written to $png"
  else
    size=$(stat -c %s -- "$png")
    # A PNG starts with its 8-byte signature, then the IHDR chunk: width and height at 16..23.
    magic=$(od -An -tx1 -N8 -- "$png" | tr -d ' \n')
    read -r width height < <(od -An -tu4 --endian=big -j16 -N8 -- "$png")
    if [[ $magic != 89504e470d0a1a0a ]]; then
      fail "$png is not a PNG"
    elif [[ $width != 1400 || $height != 900 ]]; then
      fail "screenshot is ${width}x${height}, expected 1400x900"
    elif ((size < MIN_PNG_BYTES)); then
      fail "screenshot $png is only $size bytes (< $MIN_PNG_BYTES): the page looks blank"
    else
      ok "screenshot $png (${width}x${height}, $size bytes)"
    fi
  fi
fi

# (b) The DOM after load.
dom=$work/dom.out
if run_chromium dom --virtual-time-budget=5000 --dump-dom "$url"; then
  if grep -q '<body[^>]*data-rendered="ok"' "$dom"; then
    ok 'body has data-rendered="ok"'
  else
    fail 'body has no data-rendered="ok": the page'\''s script did not finish'
  fi
  for phase in "$@"; do
    found=
    while IFS= read -r form; do
      if grep -qF -- "data-phase=\"$form\"" "$dom"; then
        found=yes
        break
      fi
    done < <(attr_forms "$phase")
    if [[ -n $found ]]; then
      ok "phase \"$phase\" is drawn (data-phase)"
    else
      fail "phase \"$phase\" is missing: no element with data-phase=\"$phase\""
    fi
  done
  if [[ $# -eq 0 ]]; then
    say "(no PHASE given: only the page as a whole was checked)"
  fi
fi

# (c) Script errors, first from Chromium's log of both runs.
uncaught=$work/uncaught.txt
cat "$work"/screenshot.log "$work"/dom.log 2>/dev/null |
  grep -E 'CONSOLE[^]]*\] "Uncaught' | sed 's/^\[[^]]*\] //' | sort -u >"$uncaught" || true
if [[ -s $uncaught ]]; then
  fail "the page threw $(wc -l <"$uncaught") script error(s) (Chromium's console log), first: $(head -n 1 "$uncaught")"
  sed 's/^/    /' "$uncaught"
else
  ok "no uncaught script error in Chromium's console log"
fi

# ... then from a recorder put into a copy of the page before any of its own scripts. The
# copy sits in the temp dir, so a page that is not self-contained (loads anything from
# beside it) fails here too.
hook='<script>(function(){var errs=[];function rec(m){errs.push(String(m).slice(0,300));
document.documentElement.setAttribute("data-check-errors",errs.join(" | "));}
window.addEventListener("error",function(e){if(e.target&&e.target!==window&&e.target.tagName){
rec("failed to load <"+e.target.tagName.toLowerCase()+"> "+(e.target.src||e.target.href||""));}
else{rec("error: "+e.message+" at line "+e.lineno);}},true);
window.addEventListener("unhandledrejection",function(e){rec("unhandled rejection: "+
(e.reason&&e.reason.message||e.reason));});var ce=console.error;console.error=function(){
rec("console.error: "+Array.prototype.map.call(arguments,String).join(" "));
return ce.apply(console,arguments);};})();</script>'
hook=${hook//$'\n'/}
copy=$work/instrumented.html
HOOK=$hook awk 'BEGIN { done = 0 }
  !done && match($0, /<[Hh][Ee][Aa][Dd]([ \t][^>]*)?>/) {
    $0 = substr($0, 1, RSTART + RLENGTH - 1) ENVIRON["HOOK"] substr($0, RSTART + RLENGTH)
    done = 1
  }
  { print }
  END { if (!done) exit 3 }' "$report" >"$copy" || {
  # No <head>: put the recorder first (quirks mode does not matter for catching errors).
  {
    printf '%s\n' "$hook"
    cat -- "$report"
  } >"$copy"
}
if run_chromium hooked --virtual-time-budget=5000 --dump-dom "file://$copy"; then
  recorded=$(grep -o 'data-check-errors="[^"]*"' "$work/hooked.out" | head -n 1 || true)
  if [[ -n $recorded ]]; then
    recorded=${recorded#data-check-errors=\"}
    recorded=${recorded%\"}
    recorded=${recorded//&quot;/'"'}
    recorded=${recorded//&lt;/"<"}
    recorded=${recorded//&gt;/">"}
    recorded=${recorded//&amp;/"&"}
    fail "the page reported errors while loading: $recorded"
  elif ! grep -q 'data-rendered="ok"' "$work/hooked.out"; then
    fail "the instrumented copy did not render (data-rendered missing)"
  else
    ok "no error event, unhandled rejection or console.error on the page"
  fi
fi

if ((${#failures[@]} > 0)); then
  say "FAILED: ${#failures[@]} check(s) failed for $report:" >&2
  for f in "${failures[@]}"; do
    printf '  - %s\n' "$f" >&2
  done
  exit 1
fi
say "all checks passed for $report ($# phase(s))"
