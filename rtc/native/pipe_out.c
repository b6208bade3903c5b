/* The pipe between nodes, sending side, in C (rtc/pipe.py's _OutgoingStream and
 * PipeEndpoint's batching): a placeholder until it is written. */
#include "rr.h"

int rr_is_pipe_out(PyObject *o) {
    (void)o;
    return 0;
}

int rr_pipe_out_active(PyObject *pipe_out) {
    (void)pipe_out;
    return 0;
}

int rr_pipe_out_forward(PyObject *pipe_out, const rr_packet *packet, int keyframe) {
    (void)pipe_out, (void)packet, (void)keyframe;
    PyErr_SetString(PyExc_NotImplementedError, "PipeOut");
    return -1;
}

int rr_register_pipe_out(PyObject *module) {
    (void)module;
    return 0;
}
