"""What the tests and the benchmarks start around labelqa, each in one place (not installed with labelqa).

``peers`` (dcmtk storescp; Orthanc and labelqa's own archive are the product's, in
``service.demo.peers``), ``postgres`` (a throw-away PostgreSQL), ``ray_cluster`` (a local multi-node Ray
cluster), ``commands`` (the labelqa CLI as a subprocess), ``studies`` (a real study with results to
write), ``small_demo`` (the small data set and bundle the tests train once), ``http`` (the HTTP app
over a context, as a test client). Nothing here imports the tests or pytest.
"""
