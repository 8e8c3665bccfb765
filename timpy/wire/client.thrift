// The timpy client protocol. This file is the single definition of every
// struct a client and a node exchange; docs/protocol.md describes it.
// Encoding: thrift binary protocol; over TCP each frame is a 4-byte big-endian
// length then the encoded Frame; over WebSocket one binary message is one
// encoded Frame, or one text message is the same Frame mapped to JSON.

namespace py timpy

const i32 PROTOCOL_VERSION = 1

enum ErrorCode {
  BAD_FRAME = 1000,
  FRAME_TOO_LARGE = 1001,
  UNKNOWN_OPERATION = 1002,
  VERSION_UNSUPPORTED = 1003,
  HANDSHAKE_REQUIRED = 1004,
  RATE_LIMITED = 1005,
  TOO_MANY_CONNECTIONS = 1006,
  BAD_REQUEST = 1007,
  TOO_SLOW = 1008,
  AUTH_REQUIRED = 2000,
  BAD_CREDENTIALS = 2001,
  USER_EXISTS = 2002,
  TOKEN_EXPIRED = 2003,
  TOKEN_INVALID = 2004,
  ACCOUNT_DISABLED = 2005,
  INVALID_NAME = 2006,
  WEAK_PASSWORD = 2007,
  ALREADY_LOGGED_IN = 2008,
  KICKED = 2009,
  NO_SUCH_USER = 3000,
  BODY_TOO_LARGE = 3001,
  INVALID_MESSAGE = 3002,
  NOT_A_MEMBER = 3003,
  NO_SUCH_GROUP = 3004,
  NOT_ALLOWED = 3005,
  GROUP_FULL = 3006,
  MUTED = 3007,
  BLOCKED = 3008,
  LIMIT_REACHED = 3009,
  NO_SUCH_MESSAGE = 3010,
  INTERNAL = 5000,
  UNAVAILABLE = 5001,
}

// A RECALL, EDIT or BURNED message acts on an earlier message of the same
// conversation, named by ext["target"] (its seq, in decimal). They are stored
// and delivered like others (so every terminal, online or later, learns of
// them); history leaves them out and shows their effect instead.
enum MessageKind {
  NORMAL = 0,
  RECALL = 1,    // the target disappears (by its sender, or a group admin; within the recall window)
  EDIT = 2,      // the target's body becomes this body (by its sender)
  BURN = 3,      // burn-after-reading (1:1): deleted once the recipient reads it
  BURNED = 4,    // sent by the node when a BURN message was read: the target is gone
  CUSTOM = 100,  // 100 and up: application kinds, with opaque body and ext
}

// First frame from the client; the node answers with Welcome or an Error.
struct Hello {
  1: i32 version,
  2: string agent,
}

struct Welcome {
  1: i32 version,
  2: string node_id,
  3: i32 max_frame,
  4: i32 max_body,
}

struct Register {
  1: string name,
  2: string password,
}

struct Login {
  1: string name,
  2: string password,
  3: string device,        // terminal id chosen by the client, stable per device
  4: bool no_sync,         // true: do not stream offline messages now
  5: string device_kind,   // "mobile", "desktop", "web", ... (limits per kind); default "other"
}

struct TokenLogin {
  1: string token,
  2: string device,
  3: bool no_sync,
  4: string device_kind,
}

struct LoginOk {
  1: string user,
  2: string token,
  3: i64 expires_at,       // ms since the epoch
  4: string device,
}

struct Logout {}

struct Message {
  1: string client_id,     // chosen by the sender; deduplicates retries
  2: string conversation,  // set by the node
  3: string sender,        // set by the node
  4: string recipient,     // user name
  5: i32 kind,
  6: binary body,
  7: i64 server_time,      // ms since the epoch, set by the node
  8: i64 seq,              // per-conversation sequence, set by the node
  9: map<string, string> ext,
}

struct Send {
  1: Message message,
}

struct Ack {
  1: string client_id,
  2: string conversation,
  3: i64 seq,
  4: i64 server_time,
  5: bool duplicate,       // true: this client_id was stored before
}

struct Error {
  1: i32 code,
  2: string text,
}

// Either conversation or peer (a user name, for the 1:1 conversation) names it.
// after_seq set (0 = from the start): the oldest messages after it; unset: the
// newest before before_seq (0 = the latest). Messages always come oldest first.
struct HistoryRequest {
  1: string conversation,
  2: string peer,
  3: i64 before_seq,
  4: optional i64 after_seq,
  5: i32 limit,
}

struct HistoryPage {
  1: string conversation,
  2: list<Message> messages,
  3: bool more,
}

// A message for this terminal, at position pos of the user's inbox.
struct Delivery {
  1: i64 pos,
  2: Message message,
}

struct SyncRequest {}

// Sent after the offline messages of a sync; later deliveries are live.
struct SyncDone {
  1: i64 pos,
  2: i32 count,
}

// The terminal has every delivery up to pos; they are not sent again.
struct DeliveryAck {
  1: i64 pos,
}

struct Ping {
  1: i64 nonce,
}

struct Pong {
  1: i64 nonce,
}

struct Ok {}
// Groups (issue 6). A group request names the group (its id from group_info;
// empty for "create"), an operation, and what that operation needs:
//   create (name, policy, users = first members), get, join, leave, approve (users),
//   reject (users), invite (users), kick (users), set_admin (users, flag),
//   transfer (users = [new owner]), mute (users, flag), mute_all (flag),
//   rename (name), set_policy (policy), set_profile (profile: avatar, notice,
//   description or any key; "" removes one; admins), dissolve.
// Policies: "open", "approval" (the default), "invite". A message to a group
// is a send whose message has conversation = the group id and no recipient.
struct GroupRequest {
  1: string group,
  2: string op,
  3: list<string> users,
  4: string name,
  5: string policy,
  6: bool flag,
  7: map<string, string> profile,
}
struct GroupInfo {
  1: string group,
  2: string name,
  3: string owner,
  4: list<string> admins,
  5: list<string> members,   // every member, owner and admins included
  6: string policy,
  7: list<string> requests,  // shown to the owner and admins only
  8: list<string> muted,
  9: bool all_muted,
  10: bool dissolved,
  11: i32 max_size,
  12: map<string, string> profile,
}

// Roster (friends and blocks). ops: list, request, accept, reject, remove,
// block, unblock; user names the other user (not for list). The reply is the
// asker's roster after the operation; a change is also pushed (rid 0) to the
// other user's terminals as their Roster.
struct RosterRequest {
  1: string op,
  2: string user,
}
struct Roster {
  1: list<string> friends,
  2: list<string> incoming,   // requests waiting for this user's answer
  3: list<string> outgoing,   // this user's requests waiting for an answer
  4: list<string> blocked,    // users this user blocked
}

// Presence. A user is online while a terminal is logged in, unless invisible.
// status: "online" (default), "busy", "away"; text is free (at most 200 chars).
struct PresenceSet {
  1: string status,
  2: string text,
  3: bool invisible,
}
// Ask for users' presence; subscribe: also be told of their changes (friends
// are told without asking) until unsubscribe; subscriptions are kept in the
// memory of the watched user's owner node: subscribe again after reconnecting.
struct PresenceQuery {
  1: list<string> users,
  2: bool subscribe,
  3: bool unsubscribe,
}
struct Presence {
  1: string user,
  2: bool online,
  3: string status,
  4: string text,
  5: i64 since,             // ms since the epoch of the last change
}
// The reply to a query, and pushed (rid 0) when a watched user changes.
struct PresenceList {
  1: list<Presence> users,
}

// A signal is never stored: delivered to the live terminals of a user (to) or
// of a conversation's members (conversation), else dropped. kind: "typing",
// or an application's own; data is opaque (at most 4 KiB).
struct Signal {
  1: string to,
  2: string conversation,
  3: string kind,
  4: binary data,
  5: string sender,         // set by the node
}

// A member has received (read = false) or read (read = true) a conversation
// up to seq. Pushed (rid 0, user set) to the other members' terminals and to
// the member's own other terminals. A read receipt also burns the BURN
// messages it covers.
struct Receipt {
  1: string conversation,
  2: i64 seq,
  3: bool read,
  4: string user,           // set by the node on a push
}
struct UnreadRequest {}
// Per conversation with unread messages: how many; and how far this user read.
struct Unread {
  1: map<string, i64> counts,
  2: map<string, i64> read,
}

// Rooms (N:N, never stored): ops enter, leave, members. A room exists while
// someone is in it; its name is chosen by the users (1 to 64 characters).
struct RoomRequest {
  1: string room,
  2: string op,
}
struct RoomInfo {
  1: string room,
  2: list<string> members,  // user names, one per terminal in the room
}
// Stream data for everyone else in a room (audio/video chunks, game state);
// not stored, not acknowledged (rid 0), limited per room per second. Pushed
// with sender set.
struct StreamData {
  1: string room,
  2: binary data,
  3: string sender,
}

// A user's profile: read any user's (user set) or one's own; set changes one's
// own fields with changes ("nickname", "avatar", any other key: custom; "" removes a key).
struct ProfileRequest {
  1: string user,
  2: map<string, string> changes,
}
struct Profile {
  1: string user,
  2: string nickname,
  3: string avatar,
  4: map<string, string> fields,   // the custom ones
}

// A pusher: where to wake this device when a message reaches it while it is
// offline, through a Matrix push gateway (docs/integrations.md). op: "set"
// (register or replace, by app_id and pushkey), "remove", or "list".
// The node answers PusherList with every pusher of the account.
struct PusherRequest {
  1: string op,
  2: string app_id,
  3: string pushkey,
  4: string url,                  // http(s)://HOST[:PORT]/_matrix/push/v1/notify
  5: map<string, string> data,    // passed to the gateway with each notification
}
struct PusherInfo {
  1: string app_id,
  2: string pushkey,
  3: string url,
  4: map<string, string> data,
  5: bool this_device,            // registered by the device that asks
}
struct PusherList {
  1: list<PusherInfo> pushers,
}
// The conversation list ("recent chats"): a page of the user's 1:1 and group
// conversations, pinned first, then the newest activity first; archived = true
// lists the archived ones instead. Kept current: a conversation_entry is pushed
// (rid 0) to the user's terminals whenever one of its entries changes.
struct ConversationListRequest {
  1: i32 offset,
  2: i32 limit,             // at most 200 (0: 200)
  3: bool archived,
}
struct ConversationEntry {
  1: string conversation,
  2: bool group,
  3: string peer,           // the other user of a 1:1 conversation
  4: string name,           // a group's name
  5: optional Message last, // the newest message shown (not recalled, burned, or an edit)
  6: i64 last_time,         // ms since the epoch of the newest activity
  7: i32 unread,            // others' messages after the read mark
  8: i32 mentions,          // of those, the ones mentioning this user (ext "mentions": names or "@all")
  9: bool muted,
  10: bool pinned,
  11: bool archived,
  12: i64 read_seq,         // this user's read mark
}
struct ConversationPage {
  1: list<ConversationEntry> entries,
  2: i32 total,             // entries in the whole list (archived ones, or the others)
  3: bool more,
}
// Set a conversation's flags for this user (unset fields stay); the reply is its entry.
struct ConversationSet {
  1: string conversation,
  2: optional bool muted,
  3: optional bool pinned,
  4: optional bool archived,
}
// Search the bodies of the conversations this user is in (conversation set: that
// one only). Words match as prefixes (up to 8 characters; longer: the whole
// word); a message matches when it holds every word. Newest first.
struct SearchRequest {
  1: string query,
  2: string conversation,
  3: i32 offset,
  4: i32 limit,             // at most 200 (0: 200)
}
struct SearchHit {
  1: string conversation,
  2: i64 seq,
  3: i64 server_time,
}
struct SearchResults {
  1: list<SearchHit> hits,
  2: i32 count,             // hits in all (at most 10,000 are counted)
  3: bool more,
}

// Threads: a message whose ext["thread"] is a root message's seq (in the 1:1
// conversation named by recipient, or the group named by conversation) goes to
// the thread under that root: a conversation of its own (its own seq), whose
// id the ack and every delivery carry (ext["thread_of"] = the parent). Read a
// thread with history(conversation = its id); ask for the threads of root
// messages (their ids and message counts) with thread_request.
struct ThreadRequest {
  1: string conversation,   // a group, or:
  2: string peer,           // the other user of a 1:1 conversation
  3: list<i64> roots,       // root message seqs (at most 200)
}
struct ThreadInfo {
  1: i64 root,
  2: string thread,         // the thread's conversation id
  3: i64 count,             // messages in the thread (0: none yet)
}
struct ThreadList {
  1: list<ThreadInfo> threads,
}

// Every frame is exactly one of these operations. rid is chosen by the
// client for a request and echoed in its reply; pushes carry rid 0.
struct Frame {
  1: i64 rid,
  2: optional Hello hello,
  3: optional Welcome welcome,
  4: optional Register register_,
  5: optional Login login,
  6: optional TokenLogin token_login,
  7: optional LoginOk login_ok,
  8: optional Logout logout,
  9: optional Send send,
  10: optional Ack ack,
  11: optional Error error,
  12: optional HistoryRequest history,
  13: optional HistoryPage history_page,
  14: optional Delivery delivery,
  15: optional SyncRequest sync,
  16: optional SyncDone sync_done,
  17: optional DeliveryAck delivery_ack,
  18: optional Ping ping,
  19: optional Pong pong,
  20: optional Ok ok,
  21: optional GroupRequest group_request,
  22: optional GroupInfo group_info,
  23: optional RosterRequest roster_request,
  24: optional Roster roster,
  25: optional PresenceSet presence_set,
  26: optional PresenceQuery presence_query,
  27: optional PresenceList presence_list,
  28: optional Signal signal,
  29: optional Receipt receipt,
  30: optional UnreadRequest unread_request,
  31: optional Unread unread,
  32: optional RoomRequest room_request,
  33: optional RoomInfo room_info,
  34: optional StreamData stream,
  35: optional ProfileRequest profile_request,
  36: optional Profile profile,
  // 60 and up: push to offline devices (numbered apart from the operations added beside them)
  60: optional PusherRequest pusher_request,
  61: optional PusherList pusher_list,
  // conversation list, search and threads (issue 18; 60 and 61 are push to
  // offline devices, from another branch)
  62: optional ConversationListRequest conversation_list,
  63: optional ConversationPage conversation_page,
  64: optional ConversationSet conversation_set,
  65: optional ConversationEntry conversation_entry,
  66: optional SearchRequest search,
  67: optional SearchResults search_results,
  68: optional ThreadRequest thread_request,
  69: optional ThreadList thread_list,
}
