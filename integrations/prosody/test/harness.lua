-- What the Lua tests of the Prosody integration share: just enough of Prosody to run its own
-- net.server loop outside the server, a module environment to load the keystore files into, a
-- scripted keystore peer on a real Unix socket that dribbles its answers out a few bytes at a
-- time (so every parser state is crossed at an arbitrary boundary), and a step runner.
--
-- local h = dofile(directory_of_this_file .. "/harness.lua")

-- net.server refuses to load outside Prosody; this is the little of Prosody it looks at.
prosody = { config_loaded = true, events = { add_handler = function () end } }; -- luacheck: ignore 111
package.path = "/usr/lib/prosody/?.lua;" .. package.path;
package.cpath = "/usr/lib/prosody/?.so;" .. package.cpath;

local server = require "net.server";
local timer = require "util.timer";
local json = require "util.json";
local unix = require "socket.unix";
if type(unix) == "function" then unix = { stream = unix }; end

local h = {
	server = server;
	timer = timer;
	json = json;
	verbose = os.getenv("VERBOSE") ~= nil;
	-- integrations/prosody
	directory = (arg[0]:match("^(.*)/[^/]*$") or ".") .. "/..";
};

--- A module object with the part of Prosody's module API the keystore files use: logging,
--- timers, options, hooks (recorded, fired by the test), storage in memory, shared tables.
function h.new_module(host, options)
	local module = { host = host; hooks = {}; global_hooks = {}; features = {}; stores = {}; events_fired = {} };
	options = options or {};
	function module.log(_, level, fmt, ...)
		if h.verbose then print("[" .. level .. "] " .. fmt:format(...)); end
	end
	function module.add_timer(_, delay, callback)
		local handle = { stopped = false };
		handle.id = timer.add_task(delay, function (now)
			if handle.stopped then return; end
			return callback(now);
		end);
		function handle.stop(this) this.stopped = true; timer.stop(this.id); end
		function handle.reschedule(this, d) timer.reschedule(this.id, d); end
		return handle;
	end
	function module.get_option(_, name, default)
		local value = options[name];
		if value == nil then return default; end
		return value;
	end
	module.get_option_path = module.get_option;
	module.get_option_number = module.get_option;
	module.get_option_boolean = module.get_option;
	module.get_option_string = module.get_option;
	function module:get_option_set(name, default)
		return require "util.set".new(self:get_option(name, default) or {});
	end
	local function add_hook(list, name, handler, priority)
		list[name] = list[name] or {};
		table.insert(list[name], { handler = handler, priority = priority or 0 });
		table.sort(list[name], function (a, b) return a.priority > b.priority; end);
	end
	function module:hook(name, handler, priority) add_hook(self.hooks, name, handler, priority); end
	function module:hook_global(name, handler, priority) add_hook(self.global_hooks, name, handler, priority); end
	--- Runs the handlers of one hook as util.events does: by priority, until one returns non-nil.
	function module:fire(name, event, global)
		for _, entry in ipairs((global and self.global_hooks or self.hooks)[name] or {}) do
			local result = entry.handler(event);
			if result ~= nil then return result; end
		end
	end
	function module:fire_event(name, event)
		table.insert(self.events_fired, { name = name, event = event });
	end
	function module.add_feature(_, feature) table.insert(module.features, feature); end
	function module:open_store(name)
		local data = self.stores[name] or {};
		self.stores[name] = data;
		return {
			get = function (_, key) return data[key or "_"]; end;
			set = function (_, key, value) data[key or "_"] = value; return true; end;
		};
	end
	local shared = {};
	function module.shared(_, name) shared[name] = shared[name] or {}; return shared[name]; end
	function module:require(name)
		return h.load(h.directory .. "/" .. name .. ".lib.lua", self);
	end
	return module;
end

--- Loads a file of integrations/prosody in `module`'s environment and returns what it returns.
function h.load(path, module)
	local env = setmetatable({ module = module }, { __index = _G });
	return assert(loadfile(path, "t", env))();
end

--- A scripted keystore on a Unix socket. For each connection, `peer.script(request, send, close)`
--- is called once the request head and body arrived (request: line, method, path, body); `send`
--- queues text that goes out 3 bytes every millisecond, `close` closes after it. Every request
--- is appended to peer.requests.
function h.scripted_peer(socket_path)
	local peer = { requests = {}, path = socket_path };
	local listener = assert(unix.stream());
	assert(listener:bind(socket_path));
	assert(listener:listen(16));
	listener:settimeout(0);
	local listeners, state = {}, {};
	function listeners.onconnect(conn)
		state[conn] = { buffer = "", answered = false };
	end
	function listeners.onincoming(conn, data)
		local s = state[conn];
		if not s or s.answered then return; end
		s.buffer = s.buffer .. data;
		local buffer = s.buffer;
		local head_end = buffer:find("\r\n\r\n", 1, true);
		if not head_end then return; end
		local length = tonumber(buffer:match("[Cc]ontent%-[Ll]ength: *(%d+)")) or 0;
		if #buffer < head_end + 3 + length then return; end
		s.answered = true;
		local line = buffer:match("^[^\r]*");
		local method, path = line:match("^(%S+) (%S+)");
		local request = { line = line, method = method, path = path, body = buffer:sub(head_end + 4) };
		peer.requests[#peer.requests + 1] = request;
		local queue, closing = {}, false;
		local function pump()
			if not state[conn] then return; end -- the client went away
			local piece = table.remove(queue, 1);
			if piece then
				conn:write(piece);
				return 0.001;
			elseif closing then
				conn:close();
			else
				return 0.001;
			end
		end
		local function send(text)
			for i = 1, #text, 3 do queue[#queue + 1] = text:sub(i, i + 2); end
		end
		timer.add_task(0, pump);
		peer.script(request, send, function () closing = true; end);
	end
	function listeners.ondisconnect(conn) state[conn] = nil; end
	server.wrapserver(listener, socket_path, 0, listeners);
	return peer;
end

--- An HTTP answer with a JSON body, as keystored sends it.
function h.json_answer(status, body)
	local text = json.encode(body);
	return ("HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"):format(status, #text, text);
end

local failures, steps = 0, {};

function h.check(condition, what)
	if not condition then
		failures = failures + 1;
		print("FAIL: " .. what);
	elseif h.verbose then
		print("ok: " .. what);
	end
	return condition;
end

--- Adds a step: run(done) must call done() once finished (within 5 s).
function h.step(name, run) steps[#steps + 1] = { name = name, run = run }; end

local function run_steps(i)
	local current = steps[i];
	if not current then
		server.setquitting(true);
		return;
	end
	if h.verbose then print("-- " .. current.name); end
	local finished = false;
	local deadline = timer.add_task(5, function ()
		if not finished then h.check(false, current.name .. ": finished within 5s"); finished = true; run_steps(i + 1); end
	end);
	current.run(function ()
		if finished then return; end
		finished = true;
		timer.stop(deadline);
		timer.add_task(0, function () run_steps(i + 1); end);
	end);
end

--- Runs every step on net.server's loop, then exits: 0 and "<label>: all N steps passed", or 1.
function h.run(label, cleanup)
	timer.add_task(0, function () run_steps(1); end);
	server.loop();
	if cleanup then cleanup(); end
	if failures > 0 then
		print(("%d check(s) failed"):format(failures));
		os.exit(1);
	end
	print(("%s: all %d steps passed"):format(label, #steps));
	os.exit(0);
end

--- A fresh socket path (removed, so the peer can bind it).
function h.socket_path()
	local path = os.tmpname();
	os.remove(path);
	return path;
end

return h;
