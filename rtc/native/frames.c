/* Placeholder until frame assembly in C lands: Python assembles every codec. */
#include "rr.h"

rr_frames *rr_frames_new(int video, int vp8) {
    (void)video, (void)vp8;
    return NULL;
}

void rr_frames_free(rr_frames *frames) { (void)frames; }

int rr_frames_add(rr_frames *frames, const rr_packet *packet, const uint8_t **data,
                  size_t *size, uint32_t *timestamp, int *keyframe) {
    (void)frames, (void)packet, (void)data, (void)size, (void)timestamp, (void)keyframe;
    return 0;
}

uint64_t rr_frames_incomplete(const rr_frames *frames) {
    (void)frames;
    return 0;
}

int rr_register_frames(PyObject *module) {
    (void)module;
    return 0;
}
