"""The transfer benchmarks of Sect. 4 and Appendix B, one module each (voc2007, voc2012, voc2012_action, caltech101,
caltech256, folder), each holding everything about its benchmark as one `base.Benchmark`: layout reader and split rule,
metric and headline, Appendix B's scales and aggregate, the paper's Table 11/12 rows. `registry.BENCHMARKS` lists
them; `registry.load_benchmark(name, root)` returns their `base.ProbeSplit`s. voc.py and caltech.py are the layout
readers that several benchmarks share, voc_action.py the VOC-2012 action layout (Table 12).

Adding a benchmark: write `vggfeat/benchmarks/NAME.py` defining `BENCHMARK = Benchmark(...)` (copy voc2012.py or
caltech256.py; import only base and the shared readers), then add `NAME.BENCHMARK` to the tuple in registry.py.
The CLI choices, the probes' scoring, the reports and the on-the-fly extraction defaults all read the registry.
"""
