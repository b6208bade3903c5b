/* Whole frames out of one stream's RTP packets: rtc.media.FrameAssembler's rules in C.
 *
 * Moderation (evidence ring buffers, recordings, thumbnails) wants frames while the
 * relay forwards packets, so the fan-out hands every packet of a source here. The
 * rules are the Python class's, decision for decision (tests/test_fastpath.py feeds
 * both the same packets):
 *   - audio: every packet is a frame, its payload as it is, keyframe true;
 *   - VP8: the payload descriptor (RFC 7741 section 4.2) is stripped and the rest
 *     joined; a frame is complete at its marker bit when no sequence number was
 *     missing since the previous frame ended; a packet older than the last one seen
 *     (a retransmission, a duplicate) is dropped; a frame given up is counted in
 *     `incomplete`.
 * Other video codecs (H264) are not assembled here: rr_frames_new refuses them and
 * Python keeps assembling them with aiortc's depayload.
 *
 * Memory: one buffer per assembler, grown (by doubling) only when a frame is bigger
 * than any before it, never per packet. A frame bigger than RR_FRAMES_MAX_SIZE is
 * given up as incomplete, so a publisher that never sends a marker, or sends
 * absurd frames, holds at most that much. The one place the C and Python disagree:
 * Python would emit such a frame.
 */
#include "rr.h"

#include <stdlib.h>
#include <string.h>

/* 2 MiB: several times a 1080p VP8 keyframe (typically 100-400 kB from browsers),
 * the most one stream's assembler ever holds. */
#define RR_FRAMES_MAX_SIZE ((size_t)2 << 20)
#define RR_FRAMES_FIRST_CAPACITY ((size_t)4096)

struct rr_frames {
    int video;
    uint8_t *buffer; /* the frame so far: descriptors stripped, packets joined */
    size_t size;
    size_t capacity;
    /* Python's `self._parts` is non-empty: a packet of this frame got past its
     * descriptor (even one not copied because the frame is already given up). */
    int has_parts;
    int broken;
    int has_timestamp;
    uint32_t timestamp;
    int has_next_sequence;
    uint16_t next_sequence;
    uint64_t incomplete;
};

rr_frames *rr_frames_new(int video, int vp8) {
    if (video && !vp8) return NULL; /* Python assembles it (aiortc's depayload) */
    rr_frames *frames = calloc(1, sizeof(*frames));
    if (frames != NULL) frames->video = video;
    return frames;
}

void rr_frames_free(rr_frames *frames) {
    if (frames == NULL) return;
    free(frames->buffer);
    free(frames);
}

uint64_t rr_frames_incomplete(const rr_frames *frames) { return frames->incomplete; }

/* rtc.rtp.vp8_descriptor_size: the descriptor's length, or 0 where Python says None
 * (no VP8 data behind it). */
static size_t vp8_descriptor_size(const uint8_t *payload, size_t n) {
    if (n == 0) return 0;
    size_t size = 1;
    if (payload[0] & 0x80) {
        if (n < 2) return 0;
        uint8_t extensions = payload[1];
        size = 2;
        if (extensions & 0x80) { /* I: 7- or 15-bit picture id */
            if (n <= size) return 0;
            size += (payload[size] & 0x80) ? 2 : 1;
        }
        if (extensions & 0x40) size += 1; /* L: TL0PICIDX */
        if (extensions & 0x30) size += 1; /* T or K: TID/Y/KEYIDX */
    }
    return size < n ? size : 0;
}

/* rtc.rtp.starts_vp8_frame: S bit set, partition 0. */
static int starts_vp8_frame(const uint8_t *payload, size_t n) {
    return n > 0 && (payload[0] & 0x10) && (payload[0] & 0x07) == 0;
}

/* Makes room for `size` bytes in all; 0 when that is over the cap or memory ran out
 * (both give the frame up: nothing here may fail louder than losing a frame). */
static int reserve(rr_frames *frames, size_t size) {
    if (size <= frames->capacity) return 1;
    if (size > RR_FRAMES_MAX_SIZE) return 0;
    size_t capacity = frames->capacity ? frames->capacity : RR_FRAMES_FIRST_CAPACITY;
    while (capacity < size) capacity *= 2;
    if (capacity > RR_FRAMES_MAX_SIZE) capacity = RR_FRAMES_MAX_SIZE;
    uint8_t *buffer = realloc(frames->buffer, capacity);
    if (buffer == NULL) return 0;
    frames->buffer = buffer;
    frames->capacity = capacity;
    return 1;
}

int rr_frames_add(rr_frames *frames, const rr_packet *packet, const uint8_t **data,
                  size_t *size, uint32_t *timestamp, int *keyframe) {
    const uint8_t *payload = packet->payload;
    size_t n = packet->payload_size;
    if (!frames->video) {
        /* Copied, not pointed at: the frame must outlive the packet (rr.h). At least
         * one byte, so that even an empty frame's *data is not NULL. */
        if (!reserve(frames, n ? n : 1)) {
            frames->incomplete++;
            return 0;
        }
        if (n) memcpy(frames->buffer, payload, n);
        *data = frames->buffer;
        *size = n;
        *timestamp = packet->timestamp;
        *keyframe = 1;
        return 1;
    }

    uint16_t sequence = packet->sequence_number;
    int has_expected = frames->has_next_sequence;
    uint16_t expected = frames->next_sequence;
    if (has_expected && (uint16_t)(sequence - expected) >= 0x8000)
        return 0; /* late: its frame has already been given up or emitted */
    frames->has_next_sequence = 1;
    frames->next_sequence = (uint16_t)(sequence + 1);
    int gap = has_expected && sequence != expected;
    if (!frames->has_timestamp || packet->timestamp != frames->timestamp) {
        int ended = !frames->has_parts;
        if (!ended) frames->incomplete++; /* the previous frame never saw its marker */
        frames->size = 0;
        frames->has_parts = 0;
        frames->has_timestamp = 1;
        frames->timestamp = packet->timestamp;
        /* After a gap the frame is whole only if the last one had ended and this
         * packet is visibly a frame's first (whole frames were lost). */
        frames->broken = gap && !(ended && starts_vp8_frame(payload, n));
    } else if (gap) {
        frames->broken = 1;
    }

    size_t start = vp8_descriptor_size(payload, n);
    if (start == 0) {
        frames->broken = 1;
    } else {
        frames->has_parts = 1;
        /* A given-up frame is never emitted (only a new timestamp clears `broken`,
         * and that empties the frame too): its bytes need not be kept. */
        if (!frames->broken) {
            size_t part = n - start;
            if (reserve(frames, frames->size + part)) {
                memcpy(frames->buffer + frames->size, payload + start, part);
                frames->size += part;
            } else {
                frames->broken = 1;
            }
        }
    }
    if (!packet->marker) return 0;
    size_t frame_size = frames->size;
    frames->size = 0;
    frames->has_parts = 0;
    if (frames->broken) {
        frames->incomplete++;
        return 0;
    }
    *data = frames->buffer;
    *size = frame_size;
    *timestamp = packet->timestamp;
    /* rtc.media.is_keyframe, RFC 6386 section 9.1: bit 0 of the frame tag is 0. */
    *keyframe = frame_size > 0 && (frames->buffer[0] & 0x01) == 0;
    return 1;
}

/* -- rtc._fastpath.FrameAssembler: the same, for tests and Python callers ------- */

typedef struct {
    PyObject_HEAD rr_frames *frames;
} FramesObject;

static void Frames_dealloc(FramesObject *self) {
    rr_frames_free(self->frames);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Frames_init(FramesObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"video", "vp8", NULL};
    int video, vp8;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "pp", keywords, &video, &vp8)) return -1;
    if (video && !vp8) {
        PyErr_SetString(PyExc_ValueError,
                        "only VP8 video is assembled in C (Python assembles the rest)");
        return -1;
    }
    rr_frames *frames = rr_frames_new(video, vp8);
    if (frames == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    rr_frames_free(self->frames); /* __init__ called again: start over */
    self->frames = frames;
    return 0;
}

/* An int in [0, limit], or -1 with ValueError/TypeError set. */
static long long bounded(PyObject *o, unsigned long long limit, const char *name) {
    if (!PyLong_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int", name);
        return -1;
    }
    int overflow;
    long long value = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (value == -1 && PyErr_Occurred()) return -1;
    if (overflow || value < 0 || (unsigned long long)value > limit) {
        PyErr_Format(PyExc_ValueError, "%s out of range", name);
        return -1;
    }
    return value;
}

static PyObject *Frames_add(FramesObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (self->frames == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "FrameAssembler.__init__ was not called");
        return NULL;
    }
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "add(payload, sequence_number, timestamp, marker) takes 4 arguments");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "payload must be bytes");
        return NULL;
    }
    long long sequence = bounded(args[1], 0xFFFF, "sequence_number");
    if (sequence < 0) return NULL;
    long long timestamp = bounded(args[2], 0xFFFFFFFF, "timestamp");
    if (timestamp < 0) return NULL;
    int marker = PyObject_IsTrue(args[3]);
    if (marker < 0) return NULL;
    rr_packet packet = {
        .payload = (const uint8_t *)PyBytes_AS_STRING(args[0]),
        .payload_size = (size_t)PyBytes_GET_SIZE(args[0]),
        .timestamp = (uint32_t)timestamp,
        .sequence_number = (uint16_t)sequence,
        .marker = (uint8_t)marker,
    };
    const uint8_t *data;
    size_t size;
    uint32_t frame_timestamp;
    int keyframe;
    if (!rr_frames_add(self->frames, &packet, &data, &size, &frame_timestamp, &keyframe))
        Py_RETURN_NONE;
    return Py_BuildValue("(y#kN)", (const char *)data, (Py_ssize_t)size,
                         (unsigned long)frame_timestamp, PyBool_FromLong(keyframe));
}

static PyObject *Frames_incomplete(FramesObject *self, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->frames ? rr_frames_incomplete(self->frames) : 0);
}

static PyMethodDef Frames_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Frames_add, METH_FASTCALL,
     "add(payload, sequence_number, timestamp, marker, /): (frame bytes, RTP timestamp, "
     "keyframe) when this packet completes a frame, else None."},
    {NULL, NULL, 0, NULL}};

static PyGetSetDef Frames_getset[] = {
    {"incomplete", (getter)Frames_incomplete, NULL, "Frames given up as incomplete so far.",
     NULL},
    {NULL, NULL, NULL, NULL, NULL}};

static PyTypeObject FramesType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "rtc._fastpath.FrameAssembler",
    .tp_basicsize = sizeof(FramesObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "FrameAssembler(video, vp8): rtc.media.FrameAssembler's rules in C "
              "(RTP timestamps not mapped; VP8 or audio only).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Frames_init,
    .tp_dealloc = (destructor)Frames_dealloc,
    .tp_methods = Frames_methods,
    .tp_getset = Frames_getset,
};

int rr_register_frames(PyObject *module) {
    if (PyType_Ready(&FramesType) < 0) return -1;
    Py_INCREF(&FramesType);
    if (PyModule_AddObject(module, "FrameAssembler", (PyObject *)&FramesType) < 0) {
        Py_DECREF(&FramesType);
        return -1;
    }
    return PyModule_AddIntConstant(module, "FRAME_MAX_SIZE", (long)RR_FRAMES_MAX_SIZE);
}
