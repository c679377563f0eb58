package nbd

// The wire format, from the NBD protocol document (doc/proto.md of the
// NetworkBlockDevice/nbd project, sections "Handshake", "Transmission" and
// "Values"). Every number on the wire is big-endian. Each message layout is
// declared once below as a fixed-size byte array with accessors, used both
// to decode what a client sends and to encode what the server answers.

import (
	"encoding/binary"
	"errors"
	"fmt"
)

var be = binary.BigEndian

// Magic numbers.
const (
	magicNBD       = 0x4e42444d41474943 // "NBDMAGIC", the first 8 bytes the server sends
	magicOpt       = 0x49484156454F5054 // "IHAVEOPT", server greeting and every option header
	magicOptReply  = 0x0003e889045565a9 // option reply header
	magicRequest   = 0x25609513         // transmission request
	magicSimple    = 0x67446698         // simple reply
	magicStructRep = 0x668e33ef         // structured reply chunk
)

// Handshake flags (server, 16 bits) and client flags (32 bits).
const (
	flagFixedNewstyle = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      = 1 << 1 // NBD_FLAG_NO_ZEROES

	clientFixedNewstyle = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	clientNoZeroes      = 1 << 1 // NBD_FLAG_C_NO_ZEROES
)

// Transmission flags (16 bits, "Transmission flags").
const (
	tflagHasFlags     = 1 << 0  // NBD_FLAG_HAS_FLAGS
	tflagReadOnly     = 1 << 1  // NBD_FLAG_READ_ONLY
	tflagSendFlush    = 1 << 2  // NBD_FLAG_SEND_FLUSH
	tflagSendFUA      = 1 << 3  // NBD_FLAG_SEND_FUA
	tflagRotational   = 1 << 4  // NBD_FLAG_ROTATIONAL
	tflagSendTrim     = 1 << 5  // NBD_FLAG_SEND_TRIM
	tflagWriteZeroes  = 1 << 6  // NBD_FLAG_SEND_WRITE_ZEROES
	tflagSendDF       = 1 << 7  // NBD_FLAG_SEND_DF
	tflagCanMultiConn = 1 << 8  // NBD_FLAG_CAN_MULTI_CONN
	tflagSendResize   = 1 << 9  // NBD_FLAG_SEND_RESIZE
	tflagSendCache    = 1 << 10 // NBD_FLAG_SEND_CACHE
	tflagFastZero     = 1 << 11 // NBD_FLAG_SEND_FAST_ZERO
)

// Options ("Option types").
const (
	optExportName     = 1  // NBD_OPT_EXPORT_NAME
	optAbort          = 2  // NBD_OPT_ABORT
	optList           = 3  // NBD_OPT_LIST
	optPeekExport     = 4  // NBD_OPT_PEEK_EXPORT (withdrawn)
	optStartTLS       = 5  // NBD_OPT_STARTTLS
	optInfo           = 6  // NBD_OPT_INFO
	optGo             = 7  // NBD_OPT_GO
	optStructuredRepl = 8  // NBD_OPT_STRUCTURED_REPLY
	optListMetaCtx    = 9  // NBD_OPT_LIST_META_CONTEXT
	optSetMetaCtx     = 10 // NBD_OPT_SET_META_CONTEXT
	optExtendedHdrs   = 11 // NBD_OPT_EXTENDED_HEADERS (not supported)
)

// Option reply types ("Option reply types"); errors have bit 31 set.
const (
	repAck          = 1 // NBD_REP_ACK
	repServer       = 2 // NBD_REP_SERVER
	repInfo         = 3 // NBD_REP_INFO
	repMetaContext  = 4 // NBD_REP_META_CONTEXT
	repErrUnsup     = 1<<31 + 1
	repErrPolicy    = 1<<31 + 2
	repErrInvalid   = 1<<31 + 3
	repErrPlatform  = 1<<31 + 4
	repErrTLSReqd   = 1<<31 + 5
	repErrUnknown   = 1<<31 + 6
	repErrShutdown  = 1<<31 + 7
	repErrBlockSize = 1<<31 + 8
	repErrTooBig    = 1<<31 + 9
)

// Information types of NBD_OPT_INFO / NBD_OPT_GO.
const (
	infoExport      = 0 // NBD_INFO_EXPORT: size (64) + transmission flags (16)
	infoName        = 1 // NBD_INFO_NAME
	infoDescription = 2 // NBD_INFO_DESCRIPTION
	infoBlockSize   = 3 // NBD_INFO_BLOCK_SIZE: min, preferred, max (32 each)
)

// Commands ("Request types") and command flags.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdCache       = 5
	cmdWriteZeroes = 6
	cmdBlockStatus = 7

	cmdFlagFUA      = 1 << 0 // NBD_CMD_FLAG_FUA
	cmdFlagNoHole   = 1 << 1 // NBD_CMD_FLAG_NO_HOLE
	cmdFlagDF       = 1 << 2 // NBD_CMD_FLAG_DF
	cmdFlagReqOne   = 1 << 3 // NBD_CMD_FLAG_REQ_ONE
	cmdFlagFastZero = 1 << 4 // NBD_CMD_FLAG_FAST_ZERO
)

// Structured reply flags and chunk types.
const (
	replyFlagDone = 1 << 0 // NBD_REPLY_FLAG_DONE

	chunkNone        = 0         // NBD_REPLY_TYPE_NONE
	chunkOffsetData  = 1         // NBD_REPLY_TYPE_OFFSET_DATA: offset (64) + data
	chunkOffsetHole  = 2         // NBD_REPLY_TYPE_OFFSET_HOLE: offset (64) + size (32)
	chunkBlockStatus = 5         // NBD_REPLY_TYPE_BLOCK_STATUS: context id (32) + n × (length, flags)
	chunkError       = 1<<15 + 1 // NBD_REPLY_TYPE_ERROR: error (32) + message length (16) + message
	chunkErrorOffset = 1<<15 + 2 // NBD_REPLY_TYPE_ERROR_OFFSET
)

// Error values ("Error values").
const (
	errPerm        = 1   // NBD_EPERM
	errIO          = 5   // NBD_EIO
	errNoMem       = 12  // NBD_ENOMEM
	errInval       = 22  // NBD_EINVAL
	errNoSpc       = 28  // NBD_ENOSPC
	errOverflow    = 75  // NBD_EOVERFLOW
	errNotSup      = 95  // NBD_ENOTSUP
	errShutdownNBD = 108 // NBD_ESHUTDOWN
)

// base:allocation ("The base: metadata namespace").
const (
	metaBaseAllocation = "base:allocation"
	metaBaseNamespace  = "base:"
	stateHole          = 1 << 0 // NBD_STATE_HOLE
	stateZero          = 1 << 1 // NBD_STATE_ZERO

	// metaIDAllocation is the context id this server gives base:allocation.
	metaIDAllocation = 1
)

// Protocol limits.
const (
	// maxString is the longest string (export name, query, message) the
	// protocol allows.
	maxString = 4096
	// maxOptionLen bounds the data of one option; a longer option is taken
	// as a denial of service and ends the connection. The largest legitimate
	// option is a NBD_OPT_SET_META_CONTEXT with a handful of queries.
	maxOptionLen = 64 << 10
	// zeroPad is the reserved tail of the NBD_OPT_EXPORT_NAME reply, left
	// out when the client set NBD_FLAG_C_NO_ZEROES.
	zeroPad = 124
)

// greeting is the first message of the newstyle handshake: NBDMAGIC,
// IHAVEOPT, then the 16-bit handshake flags.
type greeting [18]byte

func newGreeting(flags uint16) (g greeting) {
	be.PutUint64(g[0:], magicNBD)
	be.PutUint64(g[8:], magicOpt)
	be.PutUint16(g[16:], flags)
	return g
}

// optHeader is an option as the client sends it: IHAVEOPT, the option, the
// length of the data that follows.
type optHeader [16]byte

func (h *optHeader) magic() uint64  { return be.Uint64(h[0:]) }
func (h *optHeader) option() uint32 { return be.Uint32(h[8:]) }
func (h *optHeader) length() uint32 { return be.Uint32(h[12:]) }

// optReplyHeader precedes every option reply of fixed newstyle: magic, the
// option answered, the reply type, the length of the data that follows.
type optReplyHeader [20]byte

func newOptReplyHeader(opt, typ uint32, n int) (h optReplyHeader) {
	be.PutUint64(h[0:], magicOptReply)
	be.PutUint32(h[8:], opt)
	be.PutUint32(h[12:], typ)
	be.PutUint32(h[16:], uint32(n))
	return h
}

// request is a transmission request header; NBD_CMD_WRITE is followed by
// length bytes of data.
type request [28]byte

func (r *request) magic() uint32  { return be.Uint32(r[0:]) }
func (r *request) flags() uint16  { return be.Uint16(r[4:]) }
func (r *request) typ() uint16    { return be.Uint16(r[6:]) }
func (r *request) handle() uint64 { return be.Uint64(r[8:]) }
func (r *request) offset() uint64 { return be.Uint64(r[16:]) }
func (r *request) length() uint32 { return be.Uint32(r[24:]) }

// simpleReply is the reply used without structured replies: magic, error,
// handle; a successful NBD_CMD_READ is followed by its data.
type simpleReply [16]byte

func putSimpleReply(b []byte, errno uint32, handle uint64) {
	be.PutUint32(b[0:], magicSimple)
	be.PutUint32(b[4:], errno)
	be.PutUint64(b[8:], handle)
}

// chunkHeader is the header of a structured reply chunk: magic, flags,
// type, handle, length of the payload that follows.
type chunkHeader [20]byte

func putChunkHeader(b []byte, flags, typ uint16, handle uint64, n int) {
	be.PutUint32(b[0:], magicStructRep)
	be.PutUint16(b[4:], flags)
	be.PutUint16(b[6:], typ)
	be.PutUint64(b[8:], handle)
	be.PutUint32(b[16:], uint32(n))
}

// Sizes of the fixed parts of payloads.
const (
	offsetDataFixed = 8  // OFFSET_DATA: offset before the data
	offsetHoleLen   = 12 // OFFSET_HOLE: offset + size
	errorFixed      = 6  // ERROR: error + message length before the message
	descriptorLen   = 8  // BLOCK_STATUS descriptor: length + flags
)

// errBadOption reports option data that does not parse; the server answers
// NBD_REP_ERR_INVALID.
var errBadOption = errors.New("malformed option data")

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO: a 32-bit name
// length, the name, a 16-bit count and that many 16-bit information types.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest decodes the data of NBD_OPT_INFO / NBD_OPT_GO. The data
// must be used exactly.
func parseInfoRequest(b []byte) (infoRequest, error) {
	var r infoRequest
	if len(b) < 6 {
		return r, fmt.Errorf("%d bytes, want at least 6: %w", len(b), errBadOption)
	}
	n := be.Uint32(b)
	if uint64(n) > uint64(len(b)-6) {
		return r, fmt.Errorf("name length %d in %d bytes: %w", n, len(b), errBadOption)
	}
	r.name = string(b[4 : 4+n])
	rest := b[4+n:]
	count := int(be.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*count {
		return r, fmt.Errorf("%d information requests in %d bytes: %w", count, len(rest), errBadOption)
	}
	r.infos = make([]uint16, count)
	for i := range r.infos {
		r.infos[i] = be.Uint16(rest[2*i:])
	}
	return r, nil
}

// metaRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT: a 32-bit name length, the export name, a 32-bit
// query count and that many (32-bit length, query) pairs.
type metaRequest struct {
	name    string
	queries []string
}

// parseMetaRequest decodes the data of the meta context options. The data
// must be used exactly.
func parseMetaRequest(b []byte) (metaRequest, error) {
	var r metaRequest
	if len(b) < 8 {
		return r, fmt.Errorf("%d bytes, want at least 8: %w", len(b), errBadOption)
	}
	n := be.Uint32(b)
	if uint64(n) > uint64(len(b)-8) {
		return r, fmt.Errorf("name length %d in %d bytes: %w", n, len(b), errBadOption)
	}
	r.name = string(b[4 : 4+n])
	rest := b[4+n:]
	count := be.Uint32(rest)
	rest = rest[4:]
	// Each query takes at least 4 bytes: a count beyond that cannot be
	// honest, and must not size an allocation.
	if uint64(count) > uint64(len(rest)/4) {
		return r, fmt.Errorf("%d queries in %d bytes: %w", count, len(rest), errBadOption)
	}
	r.queries = make([]string, 0, count)
	for i := range count {
		if len(rest) < 4 {
			return r, fmt.Errorf("query %d: truncated length: %w", i, errBadOption)
		}
		q := be.Uint32(rest)
		rest = rest[4:]
		if uint64(q) > uint64(len(rest)) {
			return r, fmt.Errorf("query %d: length %d in %d bytes: %w", i, q, len(rest), errBadOption)
		}
		r.queries = append(r.queries, string(rest[:q]))
		rest = rest[q:]
	}
	if len(rest) != 0 {
		return r, fmt.Errorf("%d bytes after the queries: %w", len(rest), errBadOption)
	}
	return r, nil
}

// optName names an option for messages.
func optName(opt uint32) string {
	switch opt {
	case optExportName:
		return "NBD_OPT_EXPORT_NAME"
	case optAbort:
		return "NBD_OPT_ABORT"
	case optList:
		return "NBD_OPT_LIST"
	case optStartTLS:
		return "NBD_OPT_STARTTLS"
	case optInfo:
		return "NBD_OPT_INFO"
	case optGo:
		return "NBD_OPT_GO"
	case optStructuredRepl:
		return "NBD_OPT_STRUCTURED_REPLY"
	case optListMetaCtx:
		return "NBD_OPT_LIST_META_CONTEXT"
	case optSetMetaCtx:
		return "NBD_OPT_SET_META_CONTEXT"
	}
	return fmt.Sprintf("option %d", opt)
}

// cmdName names a command for messages.
func cmdName(c uint16) string {
	switch c {
	case cmdRead:
		return "NBD_CMD_READ"
	case cmdWrite:
		return "NBD_CMD_WRITE"
	case cmdDisc:
		return "NBD_CMD_DISC"
	case cmdFlush:
		return "NBD_CMD_FLUSH"
	case cmdTrim:
		return "NBD_CMD_TRIM"
	case cmdCache:
		return "NBD_CMD_CACHE"
	case cmdWriteZeroes:
		return "NBD_CMD_WRITE_ZEROES"
	case cmdBlockStatus:
		return "NBD_CMD_BLOCK_STATUS"
	}
	return fmt.Sprintf("command %d", c)
}
