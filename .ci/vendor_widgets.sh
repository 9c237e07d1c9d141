#!/usr/bin/env bash
# Fetch the JS the static book pages load into _vendor_static/ (served as _static/, see _config.yml),
# so no page needs a CDN: widgets/ draws ipywidgets, mathjax/ renders the math. Idempotent.
set -euo pipefail

HTML_MANAGER=@jupyter-widgets/html-manager@1.0.6
REQUIREJS=requirejs@2.3.4
MATHJAX=mathjax@3.2.2
DEST="$(cd "$(dirname "$0")/.." && pwd)/_vendor_static"
STAMP="$DEST/VERSIONS"
WANTED="$HTML_MANAGER $REQUIREJS $MATHJAX"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANTED" ]; then
  exit 0
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
npm pack --silent $WANTED >/dev/null
mkdir html-manager requirejs mathjax
tar -xzf jupyter-widgets-html-manager-*.tgz -C html-manager --strip-components=1
tar -xzf requirejs-*.tgz -C requirejs --strip-components=1
tar -xzf mathjax-*.tgz -C mathjax --strip-components=1

rm -rf "$DEST"
mkdir -p "$DEST/widgets" "$DEST/mathjax/output/chtml/fonts" "$DEST/mathjax/input/tex"
# embed-amd.js bundles @jupyter-widgets/base, controls and output: with require.js, its AMD loader,
# it draws the standard widgets offline (tests/test_book.py checks). Left out: source maps, embed.js
# (the non-AMD build) and its chunks, and the icon fonts (the theme's Font Awesome script draws icons).
cp html-manager/dist/embed-amd.js requirejs/require.js "$DEST/widgets/"
cp html-manager/LICENSE "$DEST/widgets/html-manager.LICENSE"
# MathJax: the combined TeX component, the fonts it loads and the TeX extensions it autoloads.
cp mathjax/es5/tex-mml-chtml.js mathjax/LICENSE "$DEST/mathjax/"
cp -r mathjax/es5/output/chtml/fonts/woff-v2 "$DEST/mathjax/output/chtml/fonts/"
cp -r mathjax/es5/input/tex/extensions "$DEST/mathjax/input/tex/"
echo "$WANTED" > "$STAMP"
