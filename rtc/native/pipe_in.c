/* The pipe between nodes, receiving side, in C (rtc/pipe.py's PipeEndpoint reading):
 * a placeholder until it is written. */
#include "rr.h"

int rr_register_pipe_in(PyObject *module) {
    (void)module;
    return 0;
}
