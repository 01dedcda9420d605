// Built by demo/build.sh from demo/src; see demo/README.md.
