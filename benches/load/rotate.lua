-- wrk script: every request carries the next token from a file (one per line), cycling, so a
-- cache of verified tokens cannot answer. Usage: wrk -s rotate.lua URL -- TOKEN_FILE
local tokens = {}
local i = 0

init = function(args)
  local path = args[1] or "/tmp/peer/tokens/distinct.txt"
  for line in io.lines(path) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  -- Threads start at different offsets so they do not send the same token at once.
  i = math.random(#tokens)
end

request = function()
  i = (i % #tokens) + 1
  return wrk.format("GET", nil, { ["Authorization"] = "Bearer " .. tokens[i] })
end
