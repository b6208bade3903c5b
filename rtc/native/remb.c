/* Placeholder until the C estimator lands: never asks for a REMB. */
#include <stdlib.h>

#include "rr.h"

struct rr_remb {
    int unused;
};

rr_remb *rr_remb_new(void) { return calloc(1, sizeof(rr_remb)); }

void rr_remb_free(rr_remb *remb) { free(remb); }

int rr_remb_add(rr_remb *remb, uint32_t abs_send_time, int64_t arrival_time_ms,
                uint32_t payload_size, uint32_t ssrc, uint64_t *bitrate, uint32_t *ssrcs,
                int *count, int capacity) {
    (void)remb, (void)abs_send_time, (void)arrival_time_ms, (void)payload_size, (void)ssrc;
    (void)bitrate, (void)ssrcs, (void)capacity;
    *count = 0;
    return 0;
}

int rr_register_remb(PyObject *module) {
    (void)module;
    return 0;
}
