-- Orthanc auto-routing to labelqa (annotation quality audit).
--
-- When a study becomes stable (no new instance for "StableAge" seconds), and it holds an
-- annotation object (a SEG or SR series not written by labelqa itself), post its series to the
-- modality "labelqa" (declared in DicomModalities). labelqa audits the annotations and stores its
-- results (QA report SR, heatmap Secondary Captures, "Quality Issue" KOS) back into the same study.
--
-- Results coming back make the study stable again; they are recognised by Manufacturer "labelqa"
-- and never routed again, and a study is only re-routed when its other series changed.
-- (Lua SendToModality(studyId, ...) fails for a study in Orthanc 1.10.1: the REST route works.)

local LABELQA_MODALITY = 'labelqa'
local LABELQA_MANUFACTURER = 'labelqa'

local routed = {}  -- study id -> fingerprint of the series last routed (lost on restart: harmless)

local function isOurs(series)
  local tags = series['MainDicomTags'] or {}
  return tags['Manufacturer'] == LABELQA_MANUFACTURER
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
  local request = { Resources = resources, Synchronous = false, Priority = 0 }
  local ok, err = pcall(RestApiPost, '/modalities/' .. LABELQA_MODALITY .. '/store', DumpJson(request, true))
  if ok then
    routed[studyId] = fingerprint
    print('labelqa: routed study ' .. studyId .. ' (' .. #resources .. ' series) to ' .. LABELQA_MODALITY)
  else
    print('labelqa: could not route study ' .. studyId .. ': ' .. tostring(err))
  end
end
