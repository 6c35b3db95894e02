#!/bin/sh
# `meson test --wrapper` for scripts/check-sanitizers: a test that preloads
# the sanitizer-instrumented libckpt.so gets the sanitizer runtime in front of
# it in LD_PRELOAD (the runtime must come first in the initial library list,
# which also matters for programs that are not instrumented themselves).
if [ -n "${LD_PRELOAD:-}" ] && [ -n "${SANITIZER_RUNTIME:-}" ]; then
  case ":$LD_PRELOAD:" in
  *":$SANITIZER_RUNTIME:"*) ;;
  *) LD_PRELOAD="$SANITIZER_RUNTIME:$LD_PRELOAD" ;;
  esac
  export LD_PRELOAD
fi
exec "$@"
