"""What the demo, the tests and the benchmarks start around labelqa, each in one place.

``peers`` (Orthanc, dcmtk storescp, labelqa's own archive; this machine's network or a private network
namespace), ``postgres`` (a throw-away PostgreSQL), ``ray_cluster`` (a local multi-node Ray cluster),
``ports`` (free loopback ports), ``commands`` (the labelqa CLI as a subprocess), ``studies`` (a real
study with results to write), ``small_demo`` (the small data set and bundle the tests train once).
Nothing here imports the tests or pytest.
"""
