"""The file and text formats nbsched reads, as pure parsers: no store, no scheduler, no
threads, so each is tested alone (with hypothesis) and used by whoever needs it.

* :mod:`.jobsfile`: the original program's jobs file, one job a line.
* :mod:`.sweep`: the sweep grammar, ``--lr {0.1,0.01} --seed {1..3}``.
* :mod:`.gpulist`: GPU id lists, ``"0-3,5"``.
* :mod:`.llmconfig`: the LLM config file, GPUs per model.
"""
