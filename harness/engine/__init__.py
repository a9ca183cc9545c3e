"""The run path: the command line, configuration, one run of a pairing, the ground truth,
training, the Task and Method interfaces (with the AttributionTask protocol methods see a task
through and the ModelCache service that trains and caches a task's models), profiling. It may
import the core and the read side's record, result and statistics modules (a run writes records);
the read side never imports it."""
