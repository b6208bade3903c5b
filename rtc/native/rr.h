/* What the files of the native module (rtc._fastpath) share with each other.
 *
 * The module is one extension built from rtc/_fastpath.c (SRTP, header
 * writing, sending) and the files here:
 *   fanout.c  - a source's fan-out to its subscribers' lanes (rewrite, seal, send);
 *   remb.c    - the receive-side bandwidth estimate (aiortc.rate's, in C);
 *   inbound.c - a connection's inbound RTP: decrypt, parse, statistics, NACK, REMB;
 *   frames.c  - whole frames out of a stream's packets, for moderation (rtc.media's rules);
 *   pipe_out.c - streams sent to another node over the pipe (rtc/pipe.py), batched and sealed.
 * Each registers its Python types with rr_register_*; the C entry points below
 * are how one hands packets to another without a Python object per packet.
 */
#ifndef RR_NATIVE_H
#define RR_NATIVE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/socket.h>

/* -- small helpers the files share ---------------------------------------------- */

/* A Python int as a uint32_t, masked as PyLong_AsUnsignedLongMask does: 1, or 0 with a
 * Python exception set (rtc/native/fanout.c). */
int rr_arg_u32(PyObject *o, uint32_t *out);

/* Room for rr_format_host's text: an IPv6 address with a "%scope" suffix. */
#define RR_HOST_SIZE (INET6_ADDRSTRLEN + IF_NAMESIZE + 2)

/* A datagram's source as Python's socket module writes it (CPython's makesockaddr): the
 * host into `host` (RR_HOST_SIZE bytes), with "%scope" on a scoped IPv6 address, and the
 * port. 0, or -1 for another address family (rtc/native/inbound.c). */
int rr_format_host(const struct sockaddr_storage *address, char *host, int *port);

/* -- SRTP (rtc/_fastpath.c) --------------------------------------------------- */

/* 1 if `o` is a rtc._fastpath.SrtpContext. */
int rr_is_srtp_context(PyObject *o);

/* Checks and decrypts one SRTP packet (`size` bytes at `data`) into `plain`, which
 * has room for `size` bytes and is not `data`. Returns the plaintext's size, or -1
 * if the packet is refused (malformed, not authentic, a replay, or the context is
 * an outbound one). Sets no Python exception. */
Py_ssize_t rr_srtp_unprotect(PyObject *context, const uint8_t *data, size_t size,
                             uint8_t *plain);

/* -- header writing and sending (rtc/_fastpath.c) ---------------------------- */

/* Larger than any RTP packet a browser sends or the relay writes. */
#define RR_MAX_PACKET 16384

/* 1 if `o` is a rtc._fastpath.HeaderWriter / rtc._fastpath.Destination. */
int rr_is_header_writer(PyObject *o);
int rr_is_destination(PyObject *o);

/* HeaderWriter.seal into `out` (`capacity` bytes): the same bytes. `srtp` is an outbound
 * SrtpContext; picture_id and original -1 when absent. Returns the sealed size, or -1
 * when there is nothing to send (too large, an inbound context, OpenSSL failed). */
Py_ssize_t rr_writer_seal(PyObject *writer, PyObject *srtp, int payload_type,
                          uint16_t sequence_number, uint32_t timestamp, int marker, uint64_t ntp,
                          const uint8_t *payload, size_t payload_size, int picture_id,
                          int original, uint8_t *out, size_t capacity);

/* One sendto(2) of `data` to a Destination: 0 when sent, else the errno. */
int rr_destination_send(PyObject *destination, const uint8_t *data, size_t size);

/* -- one decrypted RTP packet, as the receive side hands it on ------------------ */

typedef struct {
    const uint8_t *payload; /* the codec payload: no header, CSRCs, extensions, padding */
    size_t payload_size;
    uint32_t ssrc;
    uint32_t timestamp;
    uint16_t sequence_number;
    uint8_t payload_type;
    uint8_t marker;
} rr_packet;

/* -- fan-out (rtc/native/fanout.c) ------------------------------------------- */

/* 1 if `o` is a rtc._fastpath.Fanout. */
int rr_is_fanout(PyObject *o);

/* Hands `packet` (valid only during the call) to every native lane of `fanout` and
 * counts it. Returns 0 when that is all, 1 when Python must also see this packet
 * (Python sinks are attached, or frames are wanted that the C does not assemble),
 * -1 with a Python exception set. A packet whose payload type is not the codec Python
 * last set (PacketSource._set_codec) is neither counted nor forwarded and returns 1:
 * PacketSource._on_python_packet, seeing a new codec, sets it and pushes it again.
 * Callbacks into Python may run during the call (a keyframe wanted, frames built). */
int rr_fanout_push(PyObject *fanout, const rr_packet *packet);

/* 1 when rr_fanout_push would take a packet of `payload_type` (it is the codec Python
 * last set), 0 when Python must see it first (no codec yet, or another one). */
int rr_fanout_accepts(PyObject *fanout, int payload_type);

/* -- the pipe between nodes, sending (rtc/native/pipe_out.c) -------------------- */

/* 1 if `o` is a rtc._fastpath.PipeOut: a member of a Fanout's lanes like a Lane. */
int rr_is_pipe_out(PyObject *o);

/* Whether Python has activated the PipeOut (else the fan-out leaves the packet to Python). */
int rr_pipe_out_active(PyObject *pipe_out);

/* _OutgoingStream.push_packet in C: queue `packet` (a CODEC message first when it is a
 * keyframe) on the PipeOut's destination. 0, or -1 with a Python exception set. */
int rr_pipe_out_forward(PyObject *pipe_out, const rr_packet *packet, int keyframe);

/* The fan-out's codec changed: Python must see the next packet (as a Lane's `active`). */
void rr_pipe_out_deactivate(PyObject *pipe_out);

/* -- the pipe between nodes, receiving (rtc/native/pipe_in.c) ------------------- */

/* -- REMB estimator (rtc/native/remb.c) -------------------------------------- */

typedef struct rr_remb rr_remb;

/* The most SSRCs an estimator remembers for its REMB (aiortc's grows without bound); a
 * `capacity` of this many never cuts the list short. */
#define RR_REMB_MAX_SSRCS 16

/* A new estimator, as aiortc.rate.RemoteBitrateEstimator(); NULL when out of memory. */
rr_remb *rr_remb_new(void);
void rr_remb_free(rr_remb *remb);

/* aiortc.rate.RemoteBitrateEstimator.add(abs_send_time, arrival_time_ms,
 * payload_size, ssrc): returns 1 and fills *bitrate and ssrcs[0 .. *count) (at most
 * `capacity`) when a REMB should be sent now, 0 when not. Also 0, with nothing sent,
 * where aiortc would raise (see remb.c) and for arrival times beyond +-2**50 ms. */
int rr_remb_add(rr_remb *remb, uint32_t abs_send_time, int64_t arrival_time_ms,
                uint32_t payload_size, uint32_t ssrc, uint64_t *bitrate, uint32_t *ssrcs,
                int *count, int capacity);

/* -- frame assembly (rtc/native/frames.c) ------------------------------------ */

typedef struct rr_frames rr_frames;

/* An assembler of one stream's frames with rtc.media.FrameAssembler's rules, or NULL
 * when this codec is not assembled in C (then Python assembles it: any video codec but
 * VP8) or memory ran out. `video`: a video stream; `vp8`: its codec is VP8. */
rr_frames *rr_frames_new(int video, int vp8);
void rr_frames_free(rr_frames *frames);

/* Adds one packet. Returns 1 when it completes a frame: *data and *size are the
 * frame's bytes (valid until the next call on `frames`), *timestamp the packet's RTP
 * timestamp (not mapped: Python's TimestampMapper does that), *keyframe whether a
 * decoder can start from it (rtc.media.is_keyframe); 0 otherwise. */
int rr_frames_add(rr_frames *frames, const rr_packet *packet, const uint8_t **data,
                  size_t *size, uint32_t *timestamp, int *keyframe);

/* Frames given up as incomplete so far (FrameAssembler.incomplete). */
uint64_t rr_frames_incomplete(const rr_frames *frames);

/* -- registration: each file adds its Python types to the module ------------- */

int rr_register_fanout(PyObject *module);
int rr_register_remb(PyObject *module);
int rr_register_inbound(PyObject *module);
int rr_register_frames(PyObject *module);
int rr_register_pipe_out(PyObject *module);
int rr_register_pipe_in(PyObject *module);

#endif
