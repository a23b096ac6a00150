"""`./run.sh demo` (`python -m aigateway.demo`): the gateway at work without a GPU.

It starts the gateway as `./run.sh` does (`python -m aigateway`) in front of the fake
Ollama of `testing/` answering at a GPU's pace, with a throw-away database in a temporary
folder; sets up keys, a price and a budget through the admin service as an admin would;
makes a little traffic for the dashboard; prints where to look and what to paste into a
second terminal; and on Ctrl-C stops everything and removes the folder.

Like `bench/`, it sits above the layers: a program that runs the whole gateway, not a
part of it (nothing in the package imports it).
"""
