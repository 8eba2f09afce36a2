-- Client for keystored's local API (HTTP/1.1 + JSON on a Unix socket), for Prosody modules.
--
-- Loaded with module:require("keystore_client") by mod_keystore_certs (and mod_keystore_tokens),
-- so it runs in the calling module's environment (`module` is that module).
--
-- Prosody's net.http only speaks TCP, so requests go through luasocket's socket.unix wrapped by
-- net.server (exactly what util/adminstream.lua does for the admin socket) and responses are
-- parsed by net.http.parser. Nothing here blocks Prosody's loop: every request returns a
-- util.promise; callers inside an async runner may wait for it with util.async.wait_for.
--
-- Failures are plain tables, never thrown strings:
--   { kind = "unreachable" | "timeout" | "protocol", text = "..." }          no HTTP answer
--   { kind = "http", status = 403, code = "forbidden", text = "...", json = {...} }  an API error

local server = require "net.server";
local httpstream = require "net.http.parser";
local json = require "util.json";
local promise = require "util.promise";
local urlencode = require "util.http".urlencode;

local have_unix, unix = pcall(require, "socket.unix");
if have_unix and type(unix) == "function" then
	-- Older lua-socket builds export only the stream constructor (see util/adminstream.lua).
	unix = { stream = unix };
end
if type(unix) ~= "table" then
	have_unix = false;
end

local lib = {};

-- Largest answer accepted: a user's certificate list with DER bodies is the biggest one.
local max_body_bytes = 8 * 1024 * 1024;

--- Opens a non-blocking connection to the Unix socket and hands it to net.server.
local function connect_unix(socket_path, listeners)
	if not have_unix then
		return nil, "lua-socket's socket.unix is missing (install the lua-socket package)";
	end
	local sock, err = unix.stream();
	if not sock then return nil, err; end
	sock:settimeout(0);
	local ok, connect_err = sock:connect(socket_path);
	-- A non-blocking connect may still be in progress ("timeout"); net.server reports it when writable.
	if not ok and connect_err ~= "timeout" then
		sock:close();
		return nil, connect_err;
	end
	local conn, wrap_err = server.wrapclient(sock, socket_path, 0, listeners);
	if not conn then
		sock:close();
		return nil, wrap_err;
	end
	return conn;
end

local function encode_request(method, path, body)
	local lines = {
		method .. " " .. path .. " HTTP/1.1",
		"Host: keystore",
		"Accept: application/json",
	};
	if body then
		lines[#lines + 1] = "Content-Type: application/json";
		lines[#lines + 1] = "Content-Length: " .. #body;
	elseif method == "POST" then
		lines[#lines + 1] = "Content-Length: 0";
	end
	return table.concat(lines, "\r\n") .. "\r\nConnection: close\r\n\r\n" .. (body or "");
end

--- Builds "/v1/domains/<d>/users/<u>/..." from segments, percent-encoding each one.
function lib.path(...)
	local parts = {};
	for i = 1, select("#", ...) do
		parts[i] = urlencode(tostring((select(i, ...))));
	end
	return "/" .. table.concat(parts, "/");
end

local function describe_failure(err)
	if type(err) ~= "table" then return tostring(err); end
	if err.kind == "http" then
		return ("HTTP %d %s: %s"):format(err.status or 0, err.code or "?", err.text or "");
	end
	return ("%s: %s"):format(err.kind or "error", err.text or "");
end
lib.describe_failure = describe_failure;

local client_methods = {};
local client_mt = { __index = client_methods };

--- A client for one keystored socket. options.timeout: seconds per request (default 5).
function lib.new(socket_path, options)
	assert(type(socket_path) == "string" and socket_path ~= "", "keystore socket path required");
	options = options or {};
	return setmetatable({
		socket_path = socket_path;
		timeout = options.timeout or 5;
		log = options.log or function (...) module:log(...) end;
	}, client_mt);
end

--- One request. Resolves with { status, json, body } for a 2xx answer; rejects with a failure
--- table (see the header) otherwise, including API errors.
function client_methods:request(method, path, body_table)
	local body = body_table ~= nil and json.encode(body_table) or nil;
	local socket_path, timeout = self.socket_path, self.timeout;
	return promise.new(function (resolve, reject)
		local settled, conn, timer = false, nil, nil;
		local function settle(ok, value)
			if settled then return; end
			settled = true;
			if timer then timer:stop(); end
			if conn then conn:close(); end
			if ok then resolve(value); else reject(value); end
		end
		local parser = httpstream.new(function (packet)
			if packet.partial then return; end -- headers seen, body still coming
			local decoded;
			if packet.body and packet.body ~= "" then
				decoded = json.decode(packet.body);
			end
			if packet.code >= 200 and packet.code < 300 then
				if packet.body ~= "" and type(decoded) ~= "table" then
					return settle(false, { kind = "protocol", text = "keystore answered " .. packet.code .. " with a body that is not JSON" });
				end
				return settle(true, { status = packet.code, json = decoded or {}, body = packet.body });
			end
			local code = type(decoded) == "table" and decoded.error or nil;
			local text = type(decoded) == "table" and decoded.message or packet.body;
			return settle(false, { kind = "http", status = packet.code, code = code, text = text, json = decoded });
		end, function (parse_err)
			settle(false, { kind = "protocol", text = "malformed HTTP answer from keystore: " .. tostring(parse_err) });
		end, "client", function ()
			return { method = method, body_size_limit = max_body_bytes };
		end);
		local listeners = {};
		function listeners.onconnect(c)
			c:write(encode_request(method, path, body));
		end
		function listeners.onincoming(_, data)
			parser:feed(data);
		end
		function listeners.ondisconnect(_, err)
			if settled then return; end
			parser:feed(nil); -- EOF completes an answer without Content-Length
			settle(false, { kind = "unreachable", text = "keystore closed the connection: " .. tostring(err or "no answer") });
		end
		local err;
		conn, err = connect_unix(socket_path, listeners);
		if not conn then
			return settle(false, { kind = "unreachable", text = ("cannot connect to %s: %s"):format(socket_path, tostring(err)) });
		end
		timer = module:add_timer(timeout, function ()
			timer = nil;
			settle(false, { kind = "timeout", text = ("no answer from %s within %gs"):format(socket_path, timeout) });
		end);
	end);
end

function client_methods:get(path) return self:request("GET", path); end
function client_methods:post(path, body_table) return self:request("POST", path, body_table); end

--- The stanza error (type, condition, text) for a failed request, as XEP-0257 clients expect:
--- 400/422 modify/bad-request, 403 auth/forbidden, 404 cancel/item-not-found, 409 cancel/conflict,
--- keystore unreachable or 503 wait/service-unavailable. The API's message is passed on only where
--- it is about the user's input; ACL and server problems are logged instead.
function lib.stanza_error(err)
	if type(err) == "table" and err.kind == "http" then
		local status = err.status;
		if status == 400 or status == 422 then return "modify", "bad-request", err.text; end
		if status == 403 then return "auth", "forbidden", nil; end
		if status == 404 then return "cancel", "item-not-found", err.text; end
		if status == 409 then return "cancel", "conflict", err.text; end
		if status == 503 then return "wait", "service-unavailable", "The key store is not ready; retry shortly"; end
		return "wait", "internal-server-error", nil;
	end
	return "wait", "service-unavailable", "The key store is unreachable; retry shortly";
end

--- True when the failure means "the keystore cannot answer now" (fail closed, retry later).
function lib.is_unavailable(err)
	return type(err) ~= "table" or err.kind ~= "http" or err.status == 503 or err.status >= 500;
end

------------------------------------------------------------------------------------------------
-- /v1/events follower

local follower_methods = {};
local follower_mt = { __index = follower_methods };

--- Follows GET /v1/events for as long as it is not stopped, reconnecting with backoff.
---
--- handlers.on_event(event)     every event other than hello, heartbeat, resync and overflow
--- handlers.on_gap(reason)      events may have been missed: the consumer must re-check its state.
---                              Called after the (re)connection is established, so anything that
---                              happens later arrives as an event.
--- handlers.on_connected(hello), handlers.on_disconnected(reason)   optional
---
--- options: min_backoff (s, 0.2), max_backoff (s, 5), idle_timeout (s, 75: two missed heartbeats).
function client_methods:follow_events(handlers, options)
	options = options or {};
	local follower = setmetatable({
		client = self;
		handlers = handlers;
		min_backoff = options.min_backoff or 0.2;
		max_backoff = options.max_backoff or 5;
		idle_timeout = options.idle_timeout or 75;
		attempts = 0;
		cursor = nil;
		stopped = false;
		connected = false;
	}, follower_mt);
	follower:connect();
	return follower;
end

function follower_methods:log(level, fmt, ...)
	return self.client.log(level, "keystore events: " .. fmt, ...);
end

function follower_methods:schedule_reconnect(reason)
	if self.stopped or self.reconnect_timer then return; end
	self.attempts = self.attempts + 1;
	local delay = math.min(self.max_backoff, self.min_backoff * 2 ^ (self.attempts - 1));
	delay = delay * (0.5 + math.random() / 2);
	self:log(self.attempts == 1 and "warn" or "debug", "stream lost (%s); reconnecting in %.2fs", tostring(reason), delay);
	self.reconnect_timer = module:add_timer(delay, function ()
		self.reconnect_timer = nil;
		self:connect();
	end);
end

function follower_methods:disconnected(reason)
	local was_connected = self.connected;
	self.connected = false;
	if self.idle_timer then self.idle_timer:stop(); self.idle_timer = nil; end
	local conn = self.conn;
	self.conn = nil;
	if conn then conn:close(); end
	if was_connected and self.handlers.on_disconnected then
		self.handlers.on_disconnected(reason);
	end
	self:schedule_reconnect(reason);
end

function follower_methods:touch()
	if self.idle_timer then
		self.idle_timer:reschedule(self.idle_timeout);
	else
		self.idle_timer = module:add_timer(self.idle_timeout, function ()
			self.idle_timer = nil;
			self:disconnected("no event or heartbeat for " .. self.idle_timeout .. "s");
		end);
	end
end

function follower_methods:handle_line(line)
	if line == "" then return; end
	local event = json.decode(line);
	if type(event) ~= "table" or type(event.type) ~= "string" then
		-- A line we cannot read may have been a revocation: treat it as a gap.
		self:log("warn", "unreadable event line (%d bytes); re-checking everything", #line);
		self.handlers.on_gap("unreadable event line");
		return;
	end
	if type(event.cursor) == "string" then
		self.cursor = event.cursor;
	end
	local kind = event.type;
	if kind == "hello" then
		self.connected = true;
		self.attempts = 0;
		self:log("info", "connected to node %s%s", tostring(event.node), self.resumed_from and " (resuming)" or "");
		if self.handlers.on_connected then self.handlers.on_connected(event); end
		if not self.resumed_from then
			-- No cursor to resume from: whatever happened before this moment is unknown.
			self.handlers.on_gap(self.had_stream and "reconnected without a cursor" or "first connection");
		end
		self.had_stream = true;
	elseif kind == "resync" then
		self:log("info", "node cannot replay the missed events (%s); re-checking everything", tostring(event.reason));
		self.handlers.on_gap("resync: " .. tostring(event.reason));
	elseif kind == "overflow" then
		self:log("warn", "node cut the stream: %s", tostring(event.message));
	elseif kind ~= "heartbeat" then
		self.handlers.on_event(event);
	end
end

function follower_methods:connect()
	if self.stopped then return; end
	local path = "/v1/events";
	self.resumed_from = self.cursor;
	if self.cursor then
		path = path .. "?since=" .. urlencode(self.cursor);
	end
	local pending = "";
	local follower = self;
	local sink = {};
	function sink:write(data) -- luacheck: ignore 212/self
		follower:touch();
		pending = pending .. data;
		while true do
			local newline = pending:find("\n", 1, true);
			if not newline then break; end
			local line = pending:sub(1, newline - 1);
			pending = pending:sub(newline + 1);
			follower:handle_line(line);
			if follower.conn == nil then return true; end -- a handler stopped us
		end
		if #pending > 1024 * 1024 then
			follower:disconnected("event line longer than 1 MiB");
		end
		return true;
	end
	local parser = httpstream.new(function (packet)
		if packet.partial then
			if packet.code == 200 then
				packet.body_sink = sink;
			end
			return;
		end
		if packet.code ~= 200 then
			local decoded = json.decode(packet.body or "");
			self:log("error", "GET %s answered %d: %s", path, packet.code,
				type(decoded) == "table" and tostring(decoded.message) or tostring(packet.body));
			if packet.code == 400 and self.resumed_from then
				self.cursor = nil; -- a cursor the node cannot read: start afresh (and re-check everything)
			end
		end
		self:disconnected("stream ended");
	end, function (parse_err)
		self:disconnected("malformed HTTP: " .. tostring(parse_err));
	end, "client", function ()
		return { method = "GET", body_size_limit = max_body_bytes };
	end);
	local listeners = {};
	function listeners.onconnect(c)
		c:write("GET " .. path .. " HTTP/1.1\r\nHost: keystore\r\nAccept: application/x-ndjson\r\n\r\n");
	end
	function listeners.onincoming(c, data)
		if c ~= self.conn then return; end
		parser:feed(data);
	end
	function listeners.ondisconnect(c, err)
		if c ~= self.conn then return; end
		self.conn = nil;
		self:disconnected(err or "closed by keystore");
	end
	function listeners.onreadtimeout()
		return true; -- our own idle timer decides (heartbeats arrive every 30 s)
	end
	local conn, err = connect_unix(self.client.socket_path, listeners);
	if not conn then
		return self:disconnected(("cannot connect to %s: %s"):format(self.client.socket_path, tostring(err)));
	end
	self.conn = conn;
	self:touch();
end

function follower_methods:stop()
	self.stopped = true;
	if self.reconnect_timer then self.reconnect_timer:stop(); self.reconnect_timer = nil; end
	if self.idle_timer then self.idle_timer:stop(); self.idle_timer = nil; end
	local conn = self.conn;
	self.conn = nil;
	self.connected = false;
	if conn then conn:close(); end
end

return lib;
