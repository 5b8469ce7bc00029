"""`vggfeat demo`: the paper's whole pipeline - train A, then D from A, transfer fc7 descriptors to a new
task with linear SVMs and kNN - on data the project generates, in minutes on a CPU."""
