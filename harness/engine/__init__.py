"""The run path: the command line, configuration, one run of a pairing, the ground truth,
training, profiling. The Task and Method interfaces (the plugin contract, with the training
service and model store every task has) are in :mod:`tdabench.harness.plugin`, below it. The run path may
import the core and the read side's record, result and statistics modules (a run writes records);
the read side never imports it."""
