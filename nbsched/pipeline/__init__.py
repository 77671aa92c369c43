"""Job control for pipelines: notebooks run as jobs (:mod:`.notebooks`, run by
:mod:`.notebook_run`), the results a job hands back (:mod:`.results`), and the code a
job runs, recorded and copied at submission (:mod:`.snapshots`).  Engine code: no
Jupyter front end is imported here (papermill is imported only inside a notebook job's
own process, :mod:`.notebook_run`)."""
