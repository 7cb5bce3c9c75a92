# nono-shell: sourced by pyenv-exec before pyenv's own hooks (nono puts this directory first on a sandboxed
# command's PYENV_HOOK_PATH). A command cannot write pyenv's shims directory: a shim planted there would
# run later outside any sandbox. pyenv's pip-rehash hook rehashes after every `pip install` and turns its
# success into exit 1 ("pyenv: cannot rehash: ~/.pyenv/shims isn't writable"). Nothing a command installs
# can need a new shim (the versions are read-only to it), so its rehash is done: the wrapper's call to
# pyenv-rehash finds this function first (issue 20).
pyenv-rehash() { return 0; }
export -f pyenv-rehash
