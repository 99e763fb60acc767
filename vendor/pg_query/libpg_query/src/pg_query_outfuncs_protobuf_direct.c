/*
 * The parse tree as protobuf bytes, written in one pass.
 *
 * pg_query_outfuncs_protobuf.c builds the tree as upb messages in an arena
 * (a message per node, a setter per field) and then has upb encode them:
 * about 40 % of pg_query_parse_protobuf_opts on an OLTP statement. This file writes the same messages
 * (the same generated _out* functions of pg_query_outfuncs_defs.c, with
 * other WRITE_* macros) straight into a buffer.
 *
 * The bytes decode to the same ParseResult, with two differences from upb's
 * (neither changes what a decoder reads):
 *  - a message's length is written as a three-byte varint reserved before
 *    its fields are written (a non-minimal varint, as the protobuf encoding
 *    allows), except a message shorter than 128 bytes, whose fields are
 *    moved back two bytes to give it a one-byte length;
 *  - fields come in the order the _out* functions write them.
 */
#include "pg_query_outfuncs.h"
#include "pg_query_internal.h"

#include "postgres.h"
#include <ctype.h>
#include "access/relation.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "nodes/value.h"
#include "utils/datum.h"
#include "miscadmin.h"

#include "pg_query_protobuf_field_numbers.h"

typedef struct ProtobufWriter
{
	char	   *buf;
	size_t		len;
	size_t		cap;
	int			depth;			/* messages open */
	int			max_depth;		/* more is an error */
	int			deepest;		/* the most open at once */
} ProtobufWriter;

#define WIRE_VARINT 0
#define WIRE_I64 1
#define WIRE_LEN 2

/* Bytes reserved for a message's length: up to 2^21 - 1 in place. */
#define LEN_BYTES 3
#define LEN_IN_PLACE ((size_t) 1 << 21)

static void
_grow(ProtobufWriter *w, size_t need)
{
	size_t		cap = w->cap;
	char	   *buf;

	while (cap < w->len + need)
		cap *= 2;
	buf = realloc(w->buf, cap);
	if (buf == NULL)
		elog(ERROR, "out of memory writing the parse tree as protobuf");
	w->buf = buf;
	w->cap = cap;
}

static inline void
_reserve(ProtobufWriter *w, size_t need)
{
	if (unlikely(w->len + need > w->cap))
		_grow(w, need);
}

/* Writes v as a varint at p (at most 10 bytes); returns the end. */
static inline char *
_varint(char *p, uint64_t v)
{
	while (v >= 0x80)
	{
		*p++ = (char) (v | 0x80);
		v >>= 7;
	}
	*p++ = (char) v;
	return p;
}

static inline void
_putVarint(ProtobufWriter *w, uint64_t v)
{
	_reserve(w, 10);
	w->len = _varint(w->buf + w->len, v) - w->buf;
}

static inline void
_putTag(ProtobufWriter *w, int field, int wire)
{
	_putVarint(w, ((uint64_t) field << 3) | wire);
}

static inline void
_putBytes(ProtobufWriter *w, int field, const char *data, size_t n)
{
	_putTag(w, field, WIRE_LEN);
	_putVarint(w, n);
	_reserve(w, n);
	memcpy(w->buf + w->len, data, n);
	w->len += n;
}

/* Opens a length-delimited field; returns where its contents start. */
static inline size_t
_beginLen(ProtobufWriter *w, int field)
{
	_putTag(w, field, WIRE_LEN);
	_reserve(w, LEN_BYTES);
	w->len += LEN_BYTES;
	return w->len;
}

static void
_endLenLong(ProtobufWriter *w, size_t start, size_t size)
{
	char		len[10];
	size_t		n = _varint(len, size) - len;

	_reserve(w, n - LEN_BYTES);
	memmove(w->buf + start + (n - LEN_BYTES), w->buf + start, size);
	memcpy(w->buf + start - LEN_BYTES, len, n);
	w->len += n - LEN_BYTES;
}

/* Closes the field opened at `start`, writing its length. */
static inline void
_endLen(ProtobufWriter *w, size_t start)
{
	size_t		size = w->len - start;
	char	   *p = w->buf + start - LEN_BYTES;

	if (size < 0x80)
	{
		p[0] = (char) size;
		memmove(p + 1, p + LEN_BYTES, size);
		w->len -= LEN_BYTES - 1;
	}
	else if (size < LEN_IN_PLACE)
	{
		p[0] = (char) (size | 0x80);
		p[1] = (char) ((size >> 7) | 0x80);
		p[2] = (char) (size >> 14);
	}
	else
		_endLenLong(w, start, size);
}

static inline size_t
_beginMessage(ProtobufWriter *w, int field)
{
	if (unlikely(++w->depth > w->deepest))
	{
		if (w->depth > w->max_depth)
			ereport(ERROR,
					(errcode(ERRCODE_STATEMENT_TOO_COMPLEX),
					 errmsg("statement nested more than %d levels deep", w->max_depth)));
		w->deepest = w->depth;
	}
	return _beginLen(w, field);
}

static inline void
_endMessage(ProtobufWriter *w, size_t start)
{
	w->depth--;
	_endLen(w, start);
}

/* proto3 leaves out a scalar that has its default value (zero, empty). */
static inline void
_putString(ProtobufWriter *w, int field, const char *s)
{
	size_t		n;

	if (s == NULL)
		return;
	n = strlen(s);
	if (n > 0)
		_putBytes(w, field, s, n);
}

static inline void
_putDouble(ProtobufWriter *w, int field, double d)
{
	uint64_t	bits;
	int			i;

	memcpy(&bits, &d, sizeof(bits));
	if (bits == 0)
		return;
	_putTag(w, field, WIRE_I64);
	_reserve(w, 8);
	for (i = 0; i < 8; i++)
		w->buf[w->len++] = (char) (bits >> (8 * i));
}

#define FN(msgtype, outname) PGQ_FN_##msgtype##_##outname

/* The _out* functions take the writer where the upb ones take a message. */
#define OUT_TYPE(typename, typename_c) ProtobufWriter *

#define OUT_NODE(typename, typename_c, typename_underscore, typename_underscore_upcase, typename_cast, fldname) \
  { \
    size_t __m = _beginMessage(out, PGQ_FN_Node_##fldname); \
    _out##typename_c(out, (const typename_cast *) obj); \
    _endMessage(out, __m); \
  }

#define WRITE_INT_FIELD(msgtype, outname, outname_json, fldname) \
	if (node->fldname != 0) { \
		_putTag(out, FN(msgtype, outname), WIRE_VARINT); \
		_putVarint(out, (uint64_t) (int64_t) node->fldname); \
	}
#define WRITE_UINT_FIELD(msgtype, outname, outname_json, fldname) \
	if (node->fldname != 0) { \
		_putTag(out, FN(msgtype, outname), WIRE_VARINT); \
		_putVarint(out, (uint64_t) node->fldname); \
	}
#define WRITE_UINT64_FIELD(msgtype, outname, outname_json, fldname) WRITE_UINT_FIELD(msgtype, outname, outname_json, fldname)
#define WRITE_LONG_FIELD(msgtype, outname, outname_json, fldname) WRITE_INT_FIELD(msgtype, outname, outname_json, fldname)
#define WRITE_FLOAT_FIELD(msgtype, outname, outname_json, fldname) \
	_putDouble(out, FN(msgtype, outname), node->fldname);
#define WRITE_BOOL_FIELD(msgtype, outname, outname_json, fldname) \
	if (node->fldname) { \
		_putTag(out, FN(msgtype, outname), WIRE_VARINT); \
		_putVarint(out, 1); \
	}

#define WRITE_CHAR_FIELD(msgtype, outname, outname_json, fldname) \
	if (node->fldname != 0) { \
		char __c = node->fldname; \
		_putBytes(out, FN(msgtype, outname), &__c, 1); \
	}

#define WRITE_STRING_FIELD(msgtype, outname, outname_json, fldname) \
	_putString(out, FN(msgtype, outname), node->fldname);

#define WRITE_ENUM_FIELD(msgtype, enumtype, outname, outname_json, fldname) \
	{ \
		int __v = _enumToInt##enumtype(node->fldname); \
		if (__v != 0) { \
			_putTag(out, FN(msgtype, outname), WIRE_VARINT); \
			_putVarint(out, (uint64_t) (int64_t) __v); \
		} \
	}

#define WRITE_LIST_FIELD(msgtype, outname, outname_json, fldname) \
	if (node->fldname != NULL) { \
		const ListCell *__lc; \
		foreach(__lc, node->fldname) { \
			size_t __m = _beginMessage(out, FN(msgtype, outname)); \
			_outNode(out, lfirst(__lc)); \
			_endMessage(out, __m); \
		} \
	}

/* A repeated uint64 field: packed, as proto3 packs repeated scalars. */
#define WRITE_BITMAPSET_FIELD(msgtype, outname, outname_json, fldname) \
	if (!bms_is_empty(node->fldname)) { \
		int __x = -1; \
		size_t __m = _beginLen(out, FN(msgtype, outname)); \
		while ((__x = bms_next_member(node->fldname, __x)) >= 0) \
			_putVarint(out, (uint64_t) __x); \
		_endLen(out, __m); \
	}

#define WRITE_NODE_FIELD(msgtype, outname, outname_json, fldname) \
	{ \
		size_t __m = _beginMessage(out, FN(msgtype, outname)); \
		_outNode(out, &node->fldname); \
		_endMessage(out, __m); \
	}

#define WRITE_NODE_PTR_FIELD(msgtype, outname, outname_json, fldname) \
	if (node->fldname != NULL) { \
		size_t __m = _beginMessage(out, FN(msgtype, outname)); \
		_outNode(out, node->fldname); \
		_endMessage(out, __m); \
	}

#define WRITE_SPECIFIC_NODE_FIELD(msgtype, typename, typename_underscore, outname, outname_json, fldname) \
	{ \
		size_t __m = _beginMessage(out, FN(msgtype, outname)); \
		_out##typename(out, &node->fldname); \
		_endMessage(out, __m); \
	}

/* As in the upb output: this recursion bypasses _outNode's depth check. */
#define WRITE_SPECIFIC_NODE_PTR_FIELD(msgtype, typename, typename_underscore, outname, outname_json, fldname) \
	if (node->fldname != NULL) { \
		size_t __m; \
		check_stack_depth(); \
		__m = _beginMessage(out, FN(msgtype, outname)); \
		_out##typename(out, node->fldname); \
		_endMessage(out, __m); \
	}

static void _outNode(ProtobufWriter *out, const void *obj);

static void
_outListItems(ProtobufWriter *out, int field, const List *node)
{
	const ListCell *lc;

	foreach(lc, node)
	{
		size_t		m = _beginMessage(out, field);

		_outNode(out, lfirst(lc));
		_endMessage(out, m);
	}
}

static void
_outList(ProtobufWriter *out, const List *node)
{
	_outListItems(out, FN(List, items), node);
}

static void
_outIntList(ProtobufWriter *out, const List *node)
{
	_outListItems(out, FN(IntList, items), node);
}

static void
_outOidList(ProtobufWriter *out, const List *node)
{
	_outListItems(out, FN(OidList, items), node);
}

static void
_outInteger(ProtobufWriter *out, const Integer *node)
{
	WRITE_INT_FIELD(Integer, ival, ival, ival);
}

static void
_outFloat(ProtobufWriter *out, const Float *node)
{
	WRITE_STRING_FIELD(Float, fval, fval, fval);
}

static void
_outBoolean(ProtobufWriter *out, const Boolean *node)
{
	WRITE_BOOL_FIELD(Boolean, boolval, boolval, boolval);
}

static void
_outString(ProtobufWriter *out, const String *node)
{
	WRITE_STRING_FIELD(String, sval, sval, sval);
}

static void
_outBitString(ProtobufWriter *out, const BitString *node)
{
	WRITE_STRING_FIELD(BitString, bsval, bsval, bsval);
}

static void
_outAConst(ProtobufWriter *out, const A_Const *node)
{
	if (!node->isnull)
	{
		size_t		m;

		switch (nodeTag(&node->val.node))
		{
			case T_Integer:
				m = _beginMessage(out, FN(A_Const, ival));
				_outInteger(out, &node->val.ival);
				_endMessage(out, m);
				break;
			case T_Float:
				m = _beginMessage(out, FN(A_Const, fval));
				_outFloat(out, &node->val.fval);
				_endMessage(out, m);
				break;
			case T_Boolean:
				m = _beginMessage(out, FN(A_Const, boolval));
				_outBoolean(out, &node->val.boolval);
				_endMessage(out, m);
				break;
			case T_String:
				m = _beginMessage(out, FN(A_Const, sval));
				_outString(out, &node->val.sval);
				_endMessage(out, m);
				break;
			case T_BitString:
				m = _beginMessage(out, FN(A_Const, bsval));
				_outBitString(out, &node->val.bsval);
				_endMessage(out, m);
				break;
			default:
				/* Unreachable */
				Assert(false);
		}
	}
	WRITE_BOOL_FIELD(A_Const, isnull, isnull, isnull);
	WRITE_INT_FIELD(A_Const, location, location, location);
}

#include "pg_query_enum_defs.c"
#include "pg_query_outfuncs_defs.c"

static void
_outNode(ProtobufWriter *out, const void *obj)
{
	check_stack_depth();

	if (obj == NULL)
		return;					/* an empty Node, as upb leaves it */

	switch (nodeTag(obj))
	{
		#include "pg_query_outfuncs_conds.c"

		default:
			elog(WARNING, "could not dump unrecognized node type: %d",
					(int) nodeTag(obj));

			return;
	}
}

PgQueryProtobuf
pg_query_nodes_to_protobuf_direct(const void *obj, int max_depth, int *deepest)
{
	PgQueryProtobuf protobuf;

	/*
	 * Thread-local, not on the stack: an error longjmps out of the writes
	 * below, and the buffer they may have moved must be found and freed.
	 */
	static __thread ProtobufWriter w;
	ProtobufWriter *out = &w;

	w.cap = 1024;
	w.len = 0;
	w.depth = 0;
	w.deepest = 0;
	w.max_depth = max_depth > 0 && max_depth < PG_QUERY_PROTOBUF_MAX_DEPTH ? max_depth : PG_QUERY_PROTOBUF_MAX_DEPTH;
	/* malloc, not palloc: it outlives the call's memory context */
	w.buf = malloc(w.cap);
	if (w.buf == NULL)
		elog(ERROR, "out of memory writing the parse tree as protobuf");

	PG_TRY();
	{
		_putTag(out, FN(ParseResult, version), WIRE_VARINT);
		_putVarint(out, PG_VERSION_NUM);
		if (obj != NULL)
		{
			const ListCell *lc;

			foreach(lc, (const List *) obj)
			{
				size_t		m = _beginMessage(out, FN(ParseResult, stmts));

				_outRawStmt(out, lfirst(lc));
				_endMessage(out, m);
			}
		}
	}
	PG_CATCH();
	{
		free(w.buf);
		w.buf = NULL;
		PG_RE_THROW();
	}
	PG_END_TRY();

	protobuf.len = w.len;
	protobuf.data = w.buf;
	w.buf = NULL;
	if (deepest != NULL)
		*deepest = w.deepest;
	return protobuf;
}
