-- Orthanc auto-routing to labelqa (annotation quality audit).
--
-- When a study becomes stable (no new instance for "StableAge" seconds), and it holds an
-- annotation object (a SEG or SR series not written by labelqa itself), post its series to the
-- modality "labelqa" (declared in DicomModalities). labelqa audits the annotations and stores its
-- results (QA report SR, heatmap Secondary Captures, "Quality Issue" KOS) back into the same study.
--
-- Once the send job has succeeded, tell labelqa that the study is complete (POST
-- /studies/<uid>/complete on its HTTP API): it audits at once instead of waiting for its own quiet
-- period (which stays as the fallback if this call fails). Set LABELQA_API (and LABELQA_TOKEN when
-- labelqa has users or a token) in a script listed before this one in "LuaScripts", e.g.
--   LABELQA_API = 'http://127.0.0.1:8787'
--   LABELQA_TOKEN = '...'            -- a labelqa user's token (16+ random characters)
-- or leave LABELQA_API unset to rely on the quiet period alone.
--
-- Results coming back make the study stable again; they are recognised (Manufacturer "labelqa",
-- Series Number 9901-9909) and never routed again, and a study is only re-routed when its other
-- series changed.
-- (Lua SendToModality(studyId, ...) fails for a study in Orthanc 1.10.1: the REST route works.)

local LABELQA_MODALITY = 'labelqa'
local LABELQA_MANUFACTURER = 'labelqa'

local routed = {}   -- study id -> fingerprint of the series last routed (lost on restart: harmless)
local sending = {}  -- send job id -> Study Instance UID (to say it is complete once sent)

-- labelqa's result series: Manufacturer "labelqa" and Series Number 9901-9909 (SR, heatmaps, KOS, ...).
local function isOurs(series)
  local tags = series['MainDicomTags'] or {}
  local number = tonumber(tags['SeriesNumber'] or '')
  return tags['Manufacturer'] == LABELQA_MANUFACTURER and number ~= nil and number >= 9901 and number <= 9909
end

function OnStableStudy(studyId, tags, metadata)
  local series = ParseJson(RestApiGet('/studies/' .. studyId .. '/series'))
  local annotated = false
  local resources = {}
  local parts = {}
  for _, s in ipairs(series) do
    if not isOurs(s) then
      local modality = (s['MainDicomTags'] or {})['Modality']
      if modality == 'SEG' or modality == 'SR' then
        annotated = true
      end
      table.insert(resources, s['ID'])
      table.insert(parts, s['ID'] .. ':' .. #s['Instances'])
    end
  end
  if not annotated then
    return
  end
  table.sort(parts)
  local fingerprint = table.concat(parts, ',')
  if routed[studyId] == fingerprint then
    return  -- only labelqa's own results changed the study
  end
  local request = { Resources = resources, Synchronous = false }
  local ok, answer = pcall(RestApiPost, '/modalities/' .. LABELQA_MODALITY .. '/store', DumpJson(request, true))
  if ok and answer ~= nil then
    routed[studyId] = fingerprint
    local job = ParseJson(answer)['ID']
    if job ~= nil and tags ~= nil and tags['StudyInstanceUID'] ~= nil then
      sending[job] = tags['StudyInstanceUID']
    end
    print('labelqa: study ' .. studyId .. ' (' .. #resources .. ' series) queued for sending to ' .. LABELQA_MODALITY)
  else
    print('labelqa: could not route study ' .. studyId .. ' (see the error above); it is routed again when it changes')
  end
end

-- The send job is done: every instance is stored in labelqa. Say the study is complete.
function OnJobSuccess(jobId)
  local study = sending[jobId]
  if study == nil then
    return
  end
  sending[jobId] = nil
  if LABELQA_API == nil or LABELQA_API == '' then
    return  -- labelqa's quiet period completes the study
  end
  local headers = { ['Content-Type'] = 'application/json' }
  if LABELQA_TOKEN ~= nil and LABELQA_TOKEN ~= '' then
    headers['Authorization'] = 'Bearer ' .. LABELQA_TOKEN
  end
  local ok, err = pcall(HttpPost, LABELQA_API .. '/studies/' .. study .. '/complete', '{}', headers)
  if ok then
    print('labelqa: study ' .. study .. ' sent; labelqa told it is complete')
  else
    print('labelqa: study ' .. study .. ' sent; telling labelqa failed (' .. tostring(err) .. '), its quiet period applies')
  end
end

function OnJobFailure(jobId)
  sending[jobId] = nil  -- not all sent: labelqa's quiet period decides, and the study is routed again when it changes
end
